"""Cluster profiles and adapters: precedence of the config layers, translation of each profile
into its backend's arguments (Kubernetes: a DaskCluster resource checked against the Kubernetes
schemas offline), and clear errors. Real servers: tests/test_clusters_e2e.py."""

from __future__ import annotations

import textwrap

import pytest
import yaml

from infra.clusters import ADAPTERS, make_adapter, make_executor
from infra.clusters.profiles import (
    ProfileError,
    load_user_config,
    packaged_backends,
    resolve_profile,
    user_config_path,
)
from infra.executors import DaskExecutor, LocalExecutor
from infra.study import Study

NO_USER = {}


def study_with(execution: dict) -> Study:
    return Study(
        path="s.yaml", doc={"name": "x", "execution": execution}, dataset_url="d", store_url=None
    )


def test_every_backend_has_a_packaged_profile_and_an_adapter():
    assert (
        set(packaged_backends())
        == set(ADAPTERS)
        == {
            "local",
            "inprocess",
            "address",
            "slurm",
            "pbs",
            "sge",
            "gateway",
            "kubernetes",
        }
    )
    for backend in packaged_backends():
        adapter = make_adapter(backend, user_config=NO_USER)
        assert adapter.backend == backend and adapter.options["profile"] == backend


def test_precedence_explicit_over_study_over_user_over_packaged():
    user = {"default": "hpc", "profiles": {"slurm": {"queue": "short", "account": "lab"}}}
    user["profiles"]["hpc"] = {"backend": "slurm", "max_jobs": 50, "queue": "long"}
    assert resolve_profile(None, user_config=user)["profile"] == "hpc"
    assert resolve_profile(None, user_config={})["backend"] == "local"
    packaged = resolve_profile("slurm", user_config={})
    assert packaged["queue"] is None and packaged["max_jobs"] == 10
    mine = resolve_profile("slurm", user_config=user)
    assert (mine["queue"], mine["account"], mine["memory"]) == ("short", "lab", "4GB")
    hpc = resolve_profile("hpc", user_config=user)
    assert (hpc["backend"], hpc["queue"], hpc["max_jobs"]) == ("slurm", "long", 50)
    study = study_with({"cluster": "slurm", "cluster_options": {"queue": "gpu"}, "workers": 3})
    from_study = resolve_profile(None, study=study, user_config=user)
    assert (from_study["profile"], from_study["queue"], from_study["account"]) == (
        "slurm",
        "gpu",
        "lab",
    )
    explicit = resolve_profile("slurm", {"queue": "debug", "memory": None}, study, user)
    assert (explicit["queue"], explicit["memory"], explicit["workers"]) == ("debug", "4GB", 3)
    other = resolve_profile("local", study=study, user_config=user)
    assert "queue" not in other, "study options of another profile must not leak"


def test_user_config_file_from_environment(tmp_path, monkeypatch):
    path = tmp_path / "clusters.yaml"
    path.write_text("default: pbs\nprofiles:\n  pbs: {queue: workq}\n")
    monkeypatch.setenv("BOLDCLOUD_CLUSTER_CONFIG", str(path))
    assert user_config_path() == path
    assert resolve_profile()["queue"] == "workq"
    monkeypatch.setenv("BOLDCLOUD_CLUSTER_CONFIG", str(tmp_path / "absent.yaml"))
    assert load_user_config() == {}
    path.write_text("- not a mapping\n")
    monkeypatch.setenv("BOLDCLOUD_CLUSTER_CONFIG", str(path))
    with pytest.raises(ProfileError, match="expected a mapping"):
        load_user_config()


def test_local_is_sized_to_the_machine_and_workers_override():
    from dask.system import CPU_COUNT

    kwargs = make_adapter("local", user_config=NO_USER).cluster_kwargs()
    assert kwargs["n_workers"] == CPU_COUNT and kwargs["threads_per_worker"] == 1
    assert kwargs["memory_limit"] == "auto" and kwargs["host"] == "127.0.0.1"
    two = make_adapter("local", workers=2, options={"threads_per_worker": 2}, user_config=NO_USER)
    assert (two.cluster_kwargs()["n_workers"], two.cluster_kwargs()["threads_per_worker"]) == (2, 2)


def test_inprocess_and_address_keep_the_old_behaviour():
    assert isinstance(make_executor("inprocess"), LocalExecutor)
    adapter = make_adapter("tcp://10.0.0.5:8786", user_config=NO_USER)
    assert adapter.backend == "address" and adapter.options["address"] == "tcp://10.0.0.5:8786"
    assert adapter.owns_cluster is False


def test_jobqueue_translation_and_adaptive_range():
    slurm = make_adapter(
        "slurm",
        options={
            "queue": "short",
            "job_extra_directives": ["--qos=low"],
            "scheduler_host": "10.1.1.1",
        },
        user_config=NO_USER,
    )
    kwargs = slurm.cluster_kwargs()
    assert kwargs["queue"] == "short" and kwargs["job_extra_directives"] == ["--qos=low"]
    assert kwargs["scheduler_options"] == {"host": "10.1.1.1", "dashboard_address": "10.1.1.1:0"}
    assert not {"min_jobs", "max_jobs", "account", "workers"} & set(kwargs)
    assert slurm.adapt_kwargs()["minimum_jobs"] == 0 and slurm.adapt_kwargs()["maximum_jobs"] == 10
    capped = make_adapter("pbs", workers=6, options={"processes": 2}, user_config=NO_USER)
    assert capped.adapt_kwargs()["maximum_jobs"] == 3
    from dask_jobqueue.slurm import SLURMJob

    job_kwargs = {k: v for k, v in kwargs.items() if k != "scheduler_options"}
    script = SLURMJob(scheduler="tcp://10.1.1.1:8786", name="w", **job_kwargs).job_script()
    assert "#SBATCH -p short" in script and "#SBATCH --qos=low" in script
    assert "tcp://10.1.1.1:" in script


def test_gateway_password_comes_from_the_environment_only(monkeypatch):
    monkeypatch.delenv("BOLDCLOUD_GATEWAY_PASSWORD", raising=False)
    adapter = make_adapter("gateway", options={"username": "ana"}, user_config=NO_USER)
    with pytest.raises(ProfileError, match="BOLDCLOUD_GATEWAY_PASSWORD"):
        adapter.auth()
    monkeypatch.setenv("BOLDCLOUD_GATEWAY_PASSWORD", "pw")
    auth = adapter.auth()
    assert (auth.username, auth.password) == ("ana", "pw")
    assert "pw" not in repr(adapter.options)
    assert make_adapter("gateway", workers=4, user_config=NO_USER).worker_range() == (0, 4)


def test_unknown_profile_and_keys_are_explained():
    with pytest.raises(ValueError, match="use 'local', 'inprocess' or a scheduler address"):
        make_adapter("kubernetes-but-misspelt", user_config=NO_USER)
    with pytest.raises(ProfileError, match=r"unknown key.*n_wrokers"):
        make_adapter("kubernetes", options={"n_wrokers": 3}, user_config=NO_USER)
    with pytest.raises(ProfileError, match="unknown cluster backend"):
        make_adapter("x", user_config={"profiles": {"x": {"backend": "condor"}}})


def test_kubernetes_profile_becomes_a_valid_daskcluster_spec():
    pytest.importorskip("dask_kubernetes")
    kubernetes_validate = pytest.importorskip("kubernetes_validate")
    adapter = make_adapter(
        "kubernetes",
        options={"namespace": "fmri", "env": {"BOLDCLOUD_S3_ENDPOINT_URL": "http://minio:9000"}},
        workers=4,
        user_config=NO_USER,
    )
    spec = adapter.cluster_spec()
    assert (spec["kind"], spec["metadata"]["namespace"]) == ("DaskCluster", "fmri")
    assert spec["spec"]["worker"]["replicas"] == 4
    for part in ("worker", "scheduler"):
        pod = spec["spec"][part]["spec"]
        container = pod["containers"][0]
        assert container["args"][:2] == ["dask", part]
        assert container["envFrom"] == [{"secretRef": {"name": "boldcloud-s3"}}]
        assert {"name": "BOLDCLOUD_S3_ENDPOINT_URL", "value": "http://minio:9000"} in container[
            "env"
        ]
        assert pod["serviceAccountName"] == "boldcloud-dask"
        assert not any("SECRET" in e["name"] for e in container["env"])
        pod_doc = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": part}, "spec": pod}
        kubernetes_validate.validate(pod_doc, "1.31", strict=True)
    assert adapter.worker_range() is None
    scaled = make_adapter(
        "kubernetes", options={"min_workers": 1, "max_workers": 8}, user_config=NO_USER
    )
    assert scaled.worker_range() == (1, 8)


def test_study_file_accepts_cluster_settings(tmp_path):
    from infra.demo import EXAMPLE
    from infra.study import load_study

    doc = yaml.safe_load(EXAMPLE.read_text())
    doc["execution"] = {"cluster": "hpc", "workers": 8, "cluster_options": {"queue": "short"}}
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(doc))
    assert not [i for i in load_study(str(path)).issues if "execution" in str(i)]
    doc["execution"] = {"cluster": "not a name!"}
    path.write_text(yaml.safe_dump(doc))
    assert any("execution" in str(i) for i in load_study(str(path)).issues)


def test_cli_help_names_the_profiles():
    from infra.cli import build_parser

    text = textwrap.dedent(
        build_parser()._subparsers._group_actions[0].choices["run"].format_help()
    )
    assert "--cluster PROFILE" in text and "slurm" in text and "clusters.yaml" in text


def test_every_cli_command_and_argument_has_help():
    from infra.cli import build_parser

    commands = build_parser()._subparsers._group_actions[0]
    helped = {a.dest for a in commands._choices_actions}
    assert helped == set(commands.choices), "a command without help"
    missing = [
        f"{name} {action.dest}"
        for name, parser in commands.choices.items()
        for action in parser._actions
        if action.dest != "help" and not action.help
    ]
    assert not missing, f"arguments without help: {missing}"


def test_local_executor_runs_tasks(tmp_path):
    from infra.runner import _record_cluster
    from infra.storage import Store

    executor = make_executor("local", workers=1)
    try:
        assert isinstance(executor, DaskExecutor)
        assert [r for _, r in executor.map_unordered(abs, [-3], ["k"])] == [3]
        store = Store(str(tmp_path))  # the runner tells the dashboard where Dask's is
        _record_cluster(store, executor)
        link = store.read_json("manifest/cluster.json")["dashboard_link"]
        assert link == executor.client.dashboard_link and link.startswith("http://127.0.0.1:")
    finally:
        executor.close()
