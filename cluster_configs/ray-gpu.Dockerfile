# The image cluster_configs/kuberay_rayjob.yaml runs: Ray's own GPU image for the pinned
# Ray and Python, plus the project installed with the pinned set-up (scripts/setup.sh).
#
#   docker build -f cluster_configs/ray-gpu.Dockerfile -t <registry>/mtlrec-ray:0.1.0-gpu .
#   docker push <registry>/mtlrec-ray:0.1.0-gpu
#
# Not built in CI (no Docker there); see docs/cluster.md.
FROM rayproject/ray:2.55.1-py311-gpu

# scripts/setup.sh checks for Java 17: the same image can run the Spark jobs' driver.
RUN sudo apt-get update -qq \
    && sudo DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
       openjdk-17-jre-headless \
    && sudo rm -rf /var/lib/apt/lists/*

WORKDIR /app
# Only the project's sources: never a local .venv, lake or data directory.
COPY --chown=ray:users pyproject.toml constraints.txt README.md /app/
COPY --chown=ray:users scripts /app/scripts
COPY --chown=ray:users mtlrec /app/mtlrec
COPY --chown=ray:users jobs /app/jobs
COPY --chown=ray:users feature_engineering /app/feature_engineering
COPY --chown=ray:users mtl_model /app/mtl_model
COPY --chown=ray:users cluster_configs /app/cluster_configs
# The pinned stack into /app/.venv (torch==2.13.0 from PyPI is the CUDA build on Linux),
# plus ray[default] for the dashboard and job API that KubeRay's submitter talks to.
RUN PYTHON=python3.11 bash scripts/setup.sh \
    && .venv/bin/python -m pip install --quiet --no-cache-dir -c constraints.txt "ray[default]==2.55.1" \
    && rm -rf /home/ray/.cache/pip
# KubeRay starts Ray with the `ray` on PATH: the project's.
ENV PATH=/app/.venv/bin:$PATH
