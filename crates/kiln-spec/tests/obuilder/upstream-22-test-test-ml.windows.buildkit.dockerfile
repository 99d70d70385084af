# syntax=docker/dockerfile:1.19
#escape=`
FROM base
# A test comment
WORKDIR C:/src
RUN command1
SHELL [ "C:/Windows/System32/cmd.exe", "/c" ]
RUN --mount=type=cache,id=a,target=/data --mount=type=cache,id=b,target=/srv command2 && `
    command3
COPY a b c
COPY --exclude=**/.git --exclude=**/_build a b c
ENV DEBUG="1"
USER Zaphod
COPY a b c
