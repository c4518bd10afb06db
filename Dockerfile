# syntax=docker/dockerfile:1
# gradwatch: one image, two roles, chosen by the command:
#   docker run IMAGE                      -> gradwatch serve (the API on :8000)
#   docker run IMAGE worker               -> gradwatch worker (a Celery worker)
#   docker run IMAGE migrate              -> gradwatch migrate (one-shot schema upgrade)
# Configuration comes from the environment (DATABASE_URL, GRADWATCH_*); see .env.example.

ARG PYTHON_VERSION=3.11

# ---- build: a virtualenv with gradwatch and its dependencies (all prebuilt wheels) ----
FROM python:${PYTHON_VERSION}-slim AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
# dependencies first: this layer is rebuilt only when pyproject.toml changes
COPY pyproject.toml README.md ./
RUN mkdir -p core app client migrations \
 && touch core/__init__.py app/__init__.py client/__init__.py migrations/__init__.py \
 && pip install --upgrade pip \
 && pip install . \
 && pip uninstall --yes gradwatch
COPY core ./core
COPY app ./app
COPY client ./client
COPY migrations ./migrations
RUN pip install --no-deps . \
 && find /opt/venv -name "__pycache__" -prune -exec rm -rf {} +

# ---- runtime: the virtualenv only; no compiler, no pip cache, not root ----
FROM python:${PYTHON_VERSION}-slim AS runtime
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    GRADWATCH_DATA_DIR=/data \
    PORT=8000
RUN groupadd --system --gid 10001 gradwatch \
 && useradd --system --uid 10001 --gid gradwatch --home-dir /data --shell /usr/sbin/nologin gradwatch \
 && mkdir -p /data \
 && chown gradwatch:gradwatch /data
COPY --from=build /opt/venv /opt/venv
USER gradwatch:gradwatch
WORKDIR /data
EXPOSE 8000
# the API answers /healthz; a worker container answers a Celery ping (app/healthcheck.py)
HEALTHCHECK --interval=30s --timeout=10s --start-period=30s --retries=3 \
    CMD ["python", "-m", "app.healthcheck"]
# exec form: gradwatch is PID 1 and gets SIGTERM itself (warm shutdown for workers)
ENTRYPOINT ["gradwatch"]
CMD ["serve", "--host", "0.0.0.0", "--port", "8000"]
