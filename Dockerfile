# Operator image: the kopf operator and the offline tools. No torch in it.
FROM python:3.11-slim AS build
WORKDIR /src
COPY pyproject.toml README.md ./
COPY operator ./operator
COPY trainer_image/kubetrain_trainer ./trainer_image/kubetrain_trainer
RUN pip wheel --no-cache-dir --wheel-dir /wheels ".[operator]"

FROM python:3.11-slim
LABEL org.opencontainers.image.title="kubetrain-operator" \
      org.opencontainers.image.source="https://github.com/kubetrain/kubetrain"
COPY --from=build /wheels /wheels
RUN pip install --no-cache-dir --no-index --find-links /wheels "kubetrain[operator]" \
    && rm -rf /wheels \
    && python -c "import importlib.util as u, sys; sys.exit(u.find_spec('torch') is not None)"
USER 65532:65532
EXPOSE 8080 8081
ENTRYPOINT ["kubetrain"]
CMD ["operator", "--all-namespaces"]
