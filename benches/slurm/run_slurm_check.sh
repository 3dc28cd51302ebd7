#!/usr/bin/env bash
# A real one-node Slurm cluster on this machine, from Debian's packages (slurm-wlm, munge), runs a job
# array of 4 tasks of `cda-engine run --shard auto` on the shipped teacher into one folder, then
# checks with `cda-engine status` that the set is complete and compares its images, byte for byte,
# with a single-process run. The daemons (munged, slurmctld, slurmd) run in the foreground as this
# script's children, with their state in a temporary folder; nothing is installed as a service.
#
#   benches/slurm/run_slurm_check.sh [WORK_DIR]      (needs root for apt-get and the daemons)
#
# Environment: CDA_ENGINE (the binary; default target/release/cda-engine, built if missing),
# ITERATIONS (recover iterations per batch, default 20), KEEP=1 keeps WORK_DIR.
# Exit status: 0 when the job array's set is complete and identical to the single run's, 1 when it
# is not, 3 when the cluster itself could not be started here (packages, daemons), with the reason.
set -euo pipefail
cd "$(dirname "$0")/../.."
root=$PWD
work=${1:-$(mktemp -d /tmp/cda-slurm.XXXXXX)}
mkdir -p "$work"
work=$(cd "$work" && pwd)
iters=${ITERATIONS:-20}
bin=${CDA_ENGINE:-$root/target/release/cda-engine}
[ -x "$bin" ] || cargo build --release --quiet
bin=$(realpath "$bin")

# cannot_start WHY: the machine cannot host the cluster (not a failure of cda-engine).
cannot_start() {
    echo "cannot start a Slurm cluster here: $1" >&2
    exit 3
}
if ! command -v slurmctld >/dev/null || ! command -v munged >/dev/null; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends slurm-wlm munge >/dev/null ||
        cannot_start "apt-get could not install slurm-wlm and munge"
fi

pids=()
cleanup() {
    for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
    wait 2>/dev/null || true
    [ "${KEEP:-0}" = 1 ] || rm -rf "$work"
}
trap cleanup EXIT

# munge: a fresh key and socket in the work folder.
mkdir -p "$work/munge"
dd if=/dev/urandom of="$work/munge/munge.key" bs=1024 count=1 status=none
chmod 600 "$work/munge/munge.key"
munged --foreground --force --key-file="$work/munge/munge.key" --socket="$work/munge/socket" \
    --pid-file="$work/munge/munged.pid" --log-file="$work/munge/munged.log" --seed-file="$work/munge/seed" &
pids+=($!)

host=$(hostname -s)
cpus=$(nproc)
mkdir -p "$work/slurm/state" "$work/slurm/spool"
cat >"$work/slurm/slurm.conf" <<EOF
ClusterName=cda-check
SlurmctldHost=$host
SlurmUser=root
AuthType=auth/munge
AuthInfo=socket=$work/munge/socket
CryptoType=crypto/munge
StateSaveLocation=$work/slurm/state
SlurmdSpoolDir=$work/slurm/spool
SlurmctldPidFile=$work/slurm/slurmctld.pid
SlurmdPidFile=$work/slurm/slurmd.pid
SlurmctldLogFile=$work/slurm/slurmctld.log
SlurmdLogFile=$work/slurm/slurmd.log
SlurmctldPort=16817
SlurmdPort=16818
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
JobAcctGatherType=jobacct_gather/none
MpiDefault=none
ReturnToService=2
NodeName=$host CPUs=$cpus State=UNKNOWN
PartitionName=check Nodes=$host Default=YES MaxTime=INFINITE State=UP
EOF
export SLURM_CONF=$work/slurm/slurm.conf
sleep 1
slurmctld -D -f "$SLURM_CONF" &
pids+=($!)
slurmd -D -f "$SLURM_CONF" &
pids+=($!)

# Wait for the node to come up.
up=0
for _ in $(seq 60); do
    if sinfo -h -o %t 2>/dev/null | grep -qE '^(idle|mix|alloc)'; then
        up=1
        break
    fi
    sleep 1
done
[ $up = 1 ] || cannot_start "the node did not come up in 60 s ($(tail -n 3 "$work/slurm/slurmd.log" 2>/dev/null | tr '\n' ' '))"
sinfo

set_flags=(run --weights "$root/weights/fashion_mnist_resnet18_w16.safetensors" --iteration "$iters" --ipc-end 4
    --ipc-per-batch 1 --batch-size 5 --threads 1 --quiet)
echo "== one process"
"$bin" "${set_flags[@]}" --out "$work/single" >/dev/null
echo "== a Slurm job array of 4 tasks, --shard auto, one folder"
job=$(sbatch --parsable --array=0-3 --cpus-per-task=1 --output="$work/task-%a.log" \
    --wrap "$bin ${set_flags[*]} --out $work/sharded --shard auto")
echo "submitted job array $job"
for _ in $(seq 600); do
    if [ -z "$(squeue -h -j "$job" 2>/dev/null)" ]; then break; fi
    sleep 1
done
grep -h "shard" "$work"/task-*.log || true
echo "== status"
"$bin" status "$work/sharded"
echo "== images, one process against the job array"
(cd "$work/single" && find . -name '*.jpg' | sort | xargs sha256sum) >"$work/single.sha"
(cd "$work/sharded" && find . -name '*.jpg' | sort | xargs sha256sum) >"$work/sharded.sha"
if cmp -s "$work/single.sha" "$work/sharded.sha"; then
    echo "identical: $(wc -l <"$work/single.sha") images, byte for byte"
else
    diff "$work/single.sha" "$work/sharded.sha" | head
    echo "the job array's set differs from the single run's" >&2
    exit 1
fi
