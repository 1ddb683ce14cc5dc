# Sourced by the sbatch templates: start one mmkd process per task with srun, forward SLURM's
# warning signal to every rank, and requeue the job when the ranks stopped for it.
#
# --signal=B:USR1@120 sends SIGUSR1 to the batch script only; the trap forwards it through srun
# (srun passes signals on to its tasks). mmkd answers SIGUSR1 and SIGTERM alike: it finishes the
# current step (extract: batch), writes its signal checkpoint and exits 143 (130 for SIGINT). A
# SIGUSR1 stop then requeues the job (`scontrol requeue`, allowed by --requeue); a preemption
# (SIGTERM to every process of the job) is requeued by SLURM itself.

export OMP_NUM_THREADS=${OMP_NUM_THREADS:-4}
export MASTER_ADDR=${MASTER_ADDR:-$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)}
export MASTER_PORT=${MASTER_PORT:-29500}

run_ranks() {
    # RANK, LOCAL_RANK and WORLD_SIZE from SLURM's task ids: what torchrun would set.
    srun bash -c 'export RANK=$SLURM_PROCID LOCAL_RANK=$SLURM_LOCALID WORLD_SIZE=$SLURM_NTASKS; exec "$@"' \
        mmkd-rank "$@" &
    local pid=$! code requeue=0
    trap 'requeue=1; kill -USR1 "$pid"' USR1
    trap 'kill -TERM "$pid"' TERM
    wait "$pid"; code=$?
    while kill -0 "$pid" 2>/dev/null; do  # a trapped signal interrupts `wait`: wait for srun again
        wait "$pid"; code=$?
    done
    if [ "$requeue" = 1 ] && [ "$code" = 143 ]; then
        echo "mmkd: stopped for the time limit at a checkpoint; requeueing job $SLURM_JOB_ID"
        scontrol requeue "$SLURM_JOB_ID"
    fi
    return "$code"
}
