"""`/admin/v1/experiments`: create, list, stop and read out online experiments (scope
`admin`). Every replica picks a change up within `experiments_refresh_seconds`; every
change is recorded in the audit log."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from ...adapters.experiments import ExperimentConflict
from ...deps import COMMON_ERRORS, PROBLEM, AdminKey, Services, authorize
from ...experiments import InvalidExperiment, readout_body, validate
from ...rest.problems import Problem
from ...rest.responses import JSONBody
from ..schemas import ExperimentIn, ExperimentList, ExperimentOut, ExperimentReadout

router = APIRouter(prefix="/admin/v1", tags=["experiments"], dependencies=[Depends(authorize("admin"))])
Name = Annotated[str, Path(pattern=r"^[A-Za-z0-9_.:\-]{1,64}$", description="Experiment name.")]


@router.post(
    "/experiments",
    status_code=201,
    response_model=ExperimentOut,
    responses={**COMMON_ERRORS, 409: PROBLEM},
    summary="Start an experiment",
)
async def create_experiment(*, body: ExperimentIn, services: Services, principal: AdminKey):
    try:
        spec = validate(body.name, [v.model_dump() for v in body.variants], body.salt, body.surface)
    except InvalidExperiment as error:
        raise Problem(400, str(error), errors=error.errors) from None
    try:
        created = await services.experiments.store.create(spec)
    except ExperimentConflict as error:
        raise Problem(409, str(error)) from None
    await services.experiments.refresh()
    await services.audit.record(principal, "experiment.create", spec.name, None, created)
    return JSONBody(created, status_code=201, headers={"Location": f"/admin/v1/experiments/{spec.name}"})


@router.get("/experiments", response_model=ExperimentList, responses=COMMON_ERRORS, summary="Experiments, newest first")
async def list_experiments(*, services: Services):
    return JSONBody({"experiments": await services.experiments.store.list()})


@router.post(
    "/experiments/{name}/stop",
    response_model=ExperimentOut,
    responses={**COMMON_ERRORS, 404: PROBLEM},
    summary="Stop an experiment (its exposures and readout stay)",
)
async def stop_experiment(*, name: Name, services: Services, principal: AdminKey):
    found = await services.experiments.store.get(name)
    stopped = await services.experiments.store.stop(name)
    if found is None or stopped is None:
        raise Problem(404, f"no experiment {name!r}")
    await services.experiments.refresh()
    before = {key: found[1][key] for key in ("status", "stopped_at")}
    after = {key: stopped[key] for key in ("status", "stopped_at")}
    await services.audit.record(principal, "experiment.stop", name, before, after)
    return JSONBody(stopped)


@router.get(
    "/experiments/{name}/readout",
    response_model=ExperimentReadout,
    responses={**COMMON_ERRORS, 404: PROBLEM},
    summary="Per variant exposures, clicks, CTR, lift with 95% CI and p-value; sample-ratio check",
)
async def experiment_readout(*, name: Name, services: Services):
    found = await services.experiments.store.get(name)
    if found is None:
        raise Problem(404, f"no experiment {name!r}")
    spec, row = found
    # Exposures still in this replica's buffer count too.
    await services.experiments.exposures.flush()
    counts = await services.experiments.store.counts(name)
    return JSONBody({**readout_body(spec, counts), "status": row["status"]})
