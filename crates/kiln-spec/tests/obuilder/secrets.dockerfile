FROM alpine:3.19
SHELL [ "/bin/sh", "-c" ]
RUN apk add --no-cache curl ca-certificates
RUN curl -fsS -H "Authorization: Bearer $(cat /run/secrets/token)" https://example.invalid/ping
USER deploy
WORKDIR relative/dir
COPY --chown=deploy a.txt b.txt /etc/app/
RUN true
