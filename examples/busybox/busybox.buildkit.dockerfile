# syntax=docker/dockerfile:1
FROM busybox
SHELL [ "/bin/sh", "-c" ]
RUN echo hello world
