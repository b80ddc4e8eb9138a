#!/usr/bin/env bash
# The driver of a bignmf run on SLURM, as a job of its own: it fits, or resumes when the run
# directory already holds a run, so the same script is submitted again until the run is done.
# The workers are separate jobs that dask-jobqueue submits from inside this one, as
# cluster_configs/slurm.yaml says (sbatch must work on the compute nodes).
#
#   export INPUT=$PWD/data/docs.zarr RUN_DIR=$PWD/runs/docs-k50 K=50
#   jid=$(sbatch --parsable cluster_configs/slurm_job.sh)
#   # queue three more allocations, each starting after the previous one ends however it ends:
#   for i in 1 2 3; do
#       jid=$(sbatch --parsable --dependency=afterany:$jid cluster_configs/slurm_job.sh)
#   done
#
# A run that ran out of time continues from its newest checkpoint (every CHECKPOINT_EVERY
# iterations); its result is bitwise equal to an uninterrupted run. Once summary.json is
# written the later jobs exit at once.
#
#SBATCH --job-name=bignmf-driver
#SBATCH --time=12:00:00
#SBATCH --cpus-per-task=2
#SBATCH --mem=16G
#SBATCH --output=bignmf-driver-%j.out
set -euo pipefail

INPUT=${INPUT:?set INPUT to a bignmf store (bignmf convert makes one)}
RUN_DIR=${RUN_DIR:?set RUN_DIR to the run directory}
K=${K:-20}
CLUSTER=${CLUSTER:-cluster_configs/slurm.yaml}
CHECKPOINT_EVERY=${CHECKPOINT_EVERY:-5}

# module load python/3.11
# source ~/venvs/bignmf/bin/activate

if [[ -f "$RUN_DIR/summary.json" ]]; then
    echo "bignmf: $RUN_DIR is finished (summary.json); nothing to do"
    exit 0
fi
if [[ -f "$RUN_DIR/run.json" ]]; then
    echo "bignmf: resuming $RUN_DIR"
    exec bignmf resume "$RUN_DIR" --cluster "$CLUSTER" --no-progress
fi
echo "bignmf: starting $RUN_DIR"
exec bignmf fit "$INPUT" -k "$K" --out "$RUN_DIR" --cluster "$CLUSTER" \
    --checkpoint-every "$CHECKPOINT_EVERY" --checkpoint-seconds 900 --no-progress
