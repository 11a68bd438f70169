// MQTT.js (npm `mqtt`, MQTT 5) against fleetlake: a publisher that uses topic aliases and user
// properties at QoS 1 and 2, and a subscriber that takes topic aliases from the broker and records
// what it receives. Prints one JSON line:
// {"acked": n, "received": n, "props": n, "aliased": n, "topics": [...], "errors": [...]}.
// Usage: node aliases.js PORT N
const mqtt = require('mqtt');

const port = Number(process.argv[2]);
const n = Number(process.argv[3] || 200);
const url = `mqtt://127.0.0.1:${port}`;
const errors = [];
let acked = 0;
let received = 0;
let props = 0;
let aliased = 0;
const topics = new Set();

const done = () => {
  console.log(JSON.stringify({ acked, received, props, aliased, topics: [...topics], errors }));
  process.exit(0);
};
setTimeout(() => { errors.push('timeout'); done(); }, 20000);

const sub = mqtt.connect(url, {
  protocolVersion: 5,
  clientId: 'js-sub',
  reconnectPeriod: 0,
  properties: { topicAliasMaximum: 4 },
});
sub.on('error', (e) => errors.push(`sub: ${e.message}`));
sub.on('message', (topic, payload, packet) => {
  received += 1;
  topics.add(topic);
  const p = packet.properties || {};
  if (p.topicAlias) aliased += 1;
  const user = p.userProperties || {};
  if (user.k === 'v' && p.contentType === 'application/json') props += 1;
  if (received === n && acked === n) done();
});
sub.subscribe('js/#', { qos: 2 }, (err) => {
  if (err) { errors.push(`subscribe: ${err.message}`); done(); }
  const pub = mqtt.connect(url, {
    protocolVersion: 5,
    clientId: 'js-pub',
    reconnectPeriod: 0,
    autoAssignTopicAlias: true,
  });
  pub.on('error', (e) => errors.push(`pub: ${e.message}`));
  pub.on('close', () => { if (acked < n) errors.push(`pub closed after ${acked} acks`); });
  pub.on('connect', () => {
    for (let i = 0; i < n; i++) {
      const options = {
        qos: i % 2 ? 2 : 1,
        properties: { userProperties: { k: 'v' }, contentType: 'application/json' },
      };
      // One topic for all: after the first, MQTT.js sends the alias alone.
      pub.publish('js/thermostat-1/reading', JSON.stringify({ seq: i }), options, (err) => {
        if (err) errors.push(`publish ${i}: ${err.message}`);
        else acked += 1;
        if (received === n && acked === n) done();
      });
    }
  });
});
