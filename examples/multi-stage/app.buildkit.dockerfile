# syntax=docker/dockerfile:1.19
FROM debian:bookworm as site
WORKDIR /site
COPY --exclude=**/drafts --exclude=**/.git site .
RUN find . -type f | sort > MANIFEST

FROM debian:bookworm as tool
WORKDIR /build
COPY tool/greet.sh ./greet.sh
RUN install -m 0755 greet.sh greet && echo "built on $(. /etc/os-release; echo $PRETTY_NAME)" > BUILD-INFO

FROM debian:bookworm
# a small app with its own user, files from two build stages
RUN --network=host --mount=type=cache,id=apt-archives,target=/var/cache/apt/archives,uid=0 apt-get update -q && apt-get install -y -q --no-install-recommends jq
RUN useradd --uid 1001 --user-group --create-home --home-dir /srv/app app
ENV APP_HOME="/srv/app"
USER 1001:1001
WORKDIR /srv/app
COPY --chown=1001:1001 --from=tool /build/greet bin/greet
COPY --chown=1001:1001 --from=tool /build/BUILD-INFO bin/BUILD-INFO
COPY --chown=1001:1001 --from=site --exclude=**/MANIFEST /site www
RUN ./bin/greet > greeting.txt && jq -n --arg g "$(cat greeting.txt)" '{greeting: $g}' > greeting.json
