# syntax=docker/dockerfile:1
FROM base as tools
RUN make tools

FROM base
RUN --mount=type=secret,id=a,target=/secrets/a,uid=0 --mount=type=secret,id=b,target=/secrets/b,uid=0 command1
