# The runtime image auralsam2:0.1.0 used by manifests/ (KubeRay RayJob and RayService, the
# Label Studio backend, `auralsam2 serve`): the CLI, the service, the Ray batch runner and every
# platform adapter, installed by the same scripts as a development machine (scripts/setup.sh
# and scripts/setup.d/*.sh), minus what only the tests use: the Label Studio server venv and
# the browser for the FiftyOne App check.
#
#   docker build -t auralsam2:0.1.0 .        (from the repository root; see manifests/README.md)
#
# torch comes from PyPI with its CUDA libraries, so the same image runs on CPU and GPU nodes
# (the host's NVIDIA container runtime provides the driver). The bundled demo model ships
# inside the package; published weights are downloaded at run time into $AURALSAM2_HOME.
FROM python:3.11-slim-bookworm

ENV DEBIAN_FRONTEND=noninteractive \
    PIP_NO_CACHE_DIR=1 \
    PYTHONUNBUFFERED=1 \
    AURALSAM2_NO_BROWSER=1 \
    AURALSAM2_NO_LABEL_STUDIO_SERVER=1 \
    AURALSAM2_HOME=/data/weights

# ffmpeg/espeak-ng/sox: what scripts/setup.sh would install with apt; wget: KubeRay's probes.
RUN apt-get update -qq \
    && apt-get install -y -qq --no-install-recommends ffmpeg espeak-ng sox wget \
    && rm -rf /var/lib/apt/lists/*

WORKDIR /opt/auralsam2
COPY . /opt/auralsam2
RUN bash scripts/setup.sh && rm -rf /root/.cache/pip

# The venv first on PATH, also for login shells (KubeRay starts Ray with `bash -lc`, and
# Debian's /etc/profile resets PATH before it reads /etc/profile.d).
ENV PATH=/opt/auralsam2/.venv/bin:$PATH
RUN echo 'export PATH=/opt/auralsam2/.venv/bin:$PATH' > /etc/profile.d/auralsam2.sh \
    && auralsam2 --help >/dev/null && python -c "import auralsam2_service.batch, ray.serve"

EXPOSE 8765 9090
CMD ["auralsam2", "--help"]
