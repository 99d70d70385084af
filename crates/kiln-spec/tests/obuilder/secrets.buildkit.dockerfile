# syntax=docker/dockerfile:1
FROM alpine:3.19
SHELL [ "/bin/sh", "-c" ]
RUN --network=host apk add --no-cache curl ca-certificates
RUN --network=host --mount=type=secret,id=deploy-token,target=/run/secrets/token,uid=0 --mount=type=secret,id=ssh-key,target=/home/deploy/.ssh/id_ed25519,uid=0 curl -fsS -H "Authorization: Bearer $(cat /run/secrets/token)" https://example.invalid/ping
USER deploy
WORKDIR relative/dir
COPY --chown=deploy a.txt /etc/app/a.txt
COPY --chown=deploy b.txt /etc/app/b.txt
RUN true
