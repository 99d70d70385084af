FROM base as tools
RUN make tools

FROM base
RUN command1
