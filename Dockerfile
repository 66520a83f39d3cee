# The image used by docker-compose.yml for both the pipeline job and the API.
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Pinned dependencies first (cached layer). torch==2.13.0 is pinned in the lock; on an
# index without the CPU wheel, add --extra-index-url https://download.pytorch.org/whl/cpu.
COPY requirements.lock ./
RUN pip install --no-cache-dir -r requirements.lock

COPY pyproject.toml README.md ./
COPY recsys ./recsys
COPY embeddings ./embeddings
COPY serving ./serving
COPY pipelines ./pipelines
RUN pip install --no-cache-dir --no-deps --no-build-isolation -e .

RUN useradd --create-home --uid 10001 app && mkdir -p /work && chown app /work
USER app
EXPOSE 8000
CMD ["recsys", "--help"]
