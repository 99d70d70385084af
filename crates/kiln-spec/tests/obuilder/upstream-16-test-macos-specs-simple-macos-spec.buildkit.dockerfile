# syntax=docker/dockerfile:1
FROM patricoferris/empty@sha256:b95ca2b377dd736f609f0a10d63318c9f627a817823cf416402a29bfe9202bb9
RUN mkdir hello
RUN echo 'hello world' > ./hello/hello.txt
RUN cat ./hello/hello.txt
RUN rm -rf hello
RUN ls
