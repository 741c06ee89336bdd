# shellcheck shell=bash disable=SC2034  # sourced: the variables are for the caller
# Sourced by benchmarks whose reader daemons run as separate hosts (as
# tests/netns.rs): netns_setup COUNT makes COUNT network namespaces, each
# with a veth pair: host side 10.$nsid.I.1/24, namespace side 10.$nsid.I.2/24,
# default route via the host side. Servers listening on 0.0.0.0
# (BENCH_BIND=0.0.0.0 for scripts/bench-servers.sh) are reached at $net_host
# (the first pair's host address) from every namespace and from the host.
# Sets: nsid, net_host, netns[I]. Functions: netns_cleanup, in_ns I CMD...,
# ns_addr I, veth_rx I (bytes the namespace received).
netns=()
netns_cleanup() {
  local i
  for i in "${!netns[@]}"; do
    ip netns del "${netns[$i]}" 2>/dev/null || true
    ip link del "vmh$nsid-$i" 2>/dev/null || true
  done
}
netns_setup() {
  local count=$1 i ns
  # a 10.X.0.0/16 no interface uses yet (other runs, other benchmarks)
  nsid=$(($$ % 200 + 20))
  while ip -o addr | grep -q " 10\.$nsid\."; do nsid=$(((nsid - 19) % 200 + 20)); done
  for ((i = 1; i <= count; i++)); do
    ns=vecfs-mr$nsid-$i
    ip netns add "$ns"
    netns[i]=$ns
    ip link add "vmh$nsid-$i" type veth peer name "vmn$nsid-$i"
    ip link set "vmn$nsid-$i" netns "$ns"
    ip addr add "10.$nsid.$i.1/24" dev "vmh$nsid-$i"
    ip link set "vmh$nsid-$i" up
    ip -n "$ns" addr add "10.$nsid.$i.2/24" dev "vmn$nsid-$i"
    ip -n "$ns" link set "vmn$nsid-$i" up
    ip -n "$ns" link set lo up
    ip -n "$ns" route add default via "10.$nsid.$i.1"
  done
  net_host=10.$nsid.1.1
}
in_ns() { local i=$1; shift; nsenter --net="/run/netns/${netns[$i]}" "$@"; }
ns_addr() { echo "10.$nsid.$1.2"; }
veth_rx() { ip netns exec "${netns[$1]}" cat "/sys/class/net/vmn$nsid-$1/statistics/rx_bytes"; }
