# Shared by the bench scripts (sourced, not run).
# bench_config DIR PORT [EXTRA_TOML]: writes DIR/bench.toml for a bench daemon on 127.0.0.1:PORT
# with data in DIR/data, no admin endpoint, gRPC on $GRPC_LISTEN (default off), JSON logs at
# info, plus EXTRA_TOML.
bench_config() {
  cat > "$1/bench.toml" <<TOML
[node]
id = "bench"
data_dir = "$1/data"
[admin]
listen = ""
[grpc]
listen = "${GRPC_LISTEN:-}"
[mqtt]
listen = "127.0.0.1:$2"
[log]
level = "info"
format = "json"
${3:-}
TOML
}
