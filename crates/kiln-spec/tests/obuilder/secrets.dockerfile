FROM alpine:3.19
SHELL [ "/bin/sh", "-c" ]
RUN apk add --no-cache curl ca-certificates
RUN curl -fsS -H "Authorization: Bearer $(cat /run/secrets/token)" https://example.invalid/ping
USER deploy
WORKDIR relative/dir
COPY --chown=deploy a.txt /etc/app/a.txt
COPY --chown=deploy b.txt /etc/app/b.txt
RUN true
