# Local stand-in for python:3.11.11-slim-bookworm, built by containers/compose_check.py only
# where Docker Hub cannot be reached (it is reachable on a user's machine, which pulls
# the official image instead). FROM is a Debian bookworm root file system made with
# debootstrap and `docker import`ed as yolo-local/debian:bookworm; Python is Debian's
# python3.11 (3.11.2; the official image compiles 3.11.11).
# A venv at /usr/local gives the official image's layout: /usr/local/bin/python and
# pip, packages in /usr/local/lib/python3.11/site-packages, and pip allowed as root.
FROM yolo-local/debian:bookworm
LABEL io.github.yolo-serving.local-stand-in="true"

ENV PATH=/usr/local/bin:/usr/local/sbin:/usr/sbin:/usr/bin:/sbin:/bin \
    LANG=C.UTF-8

# Debian drops superseded package versions from its mirrors; the release is the pin.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3.11 python3.11-venv \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/archives/*.deb \
    && python3.11 -m venv /usr/local \
    && python -m pip --version \
    && find /usr/local -name __pycache__ -prune -exec rm -rf {} +

CMD ["python3"]
