# nginx in front of the service replicas (compose profile `scale`). Debian's nginx on the same base image as the
# service, so no other registry is needed. Research tool, not for clinical use.
ARG PYTHON_IMAGE=python:3.11-slim
FROM ${PYTHON_IMAGE}
RUN apt-get update \
 && apt-get install -y --no-install-recommends nginx-light \
 && rm -rf /var/lib/apt/lists/* /etc/nginx/sites-enabled/default \
 && ln -sf /dev/stdout /var/log/nginx/access.log && ln -sf /dev/stderr /var/log/nginx/error.log
COPY docker/lb/nginx.conf /etc/nginx/conf.d/mri.conf
EXPOSE 8080
HEALTHCHECK --interval=5s --timeout=3s --retries=5 \
  CMD ["python", "-c", "import urllib.request as u; u.urlopen('http://127.0.0.1:8080/health/ready', timeout=3)"]
CMD ["nginx", "-g", "daemon off;"]
