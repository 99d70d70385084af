# syntax=docker/dockerfile:1.19
FROM base as tools
RUN make tools

FROM base
# A test comment
WORKDIR /src
RUN a command
RUN --mount=type=secret,id=a,target=/run/secrets/a,uid=0 --mount=type=secret,id=b,target=/b,uid=0 --mount=type=cache,id=a,target=/data,uid=0 --mount=type=cache,id=b,target=/srv,uid=0 a very very very very very very very very very very very very very very very long command
COPY a b c
COPY --exclude=**/.git --exclude=**/_build a b c
COPY --from=tools binary /usr/local/bin/binary
ENV DEBUG="1"
USER 1:2
