# syntax=docker/dockerfile:1.19
FROM base
# A test comment
WORKDIR /src
RUN command1
SHELL [ "/bin/sh", "-c" ]
RUN --mount=type=cache,id=a,target=/data,uid=0 --mount=type=cache,id=b,target=/srv,uid=0 command2
COPY a b c
COPY --exclude=**/.git --exclude=**/_build a b c
ENV DEBUG="1"
USER 1:2
COPY --chown=1:2 a b c
