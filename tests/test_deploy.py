"""Deployment files, checked offline: the Kubernetes manifests (kustomize build + the Kubernetes
OpenAPI schemas of kubernetes-validate; the Dask operator's custom resources are checked through
the pod specs they embed), the SLURM/PBS example profiles and driver scripts, the Dockerfile."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from infra.clusters import make_adapter
from infra.clusters.profiles import packaged_backends

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
K8S = DEPLOY / "kubernetes"
K8S_VERSION = "1.31"
DASK_KINDS = {"DaskCluster", "DaskAutoscaler", "DaskWorkerGroup", "DaskJob"}


def _validate(doc: dict) -> None:
    import kubernetes_validate

    kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


def _pod_specs(doc: dict) -> list[dict]:
    """Pod specs inside a workload or a DaskCluster."""
    kind, spec = doc["kind"], doc.get("spec", {})
    if kind == "DaskCluster":
        return [spec["worker"]["spec"], spec["scheduler"]["spec"]]
    if kind == "Job":
        return [spec["template"]["spec"]]
    if kind == "CronJob":
        return [spec["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def _built() -> list[dict]:
    if shutil.which("kubectl") is None:
        pytest.skip("kubectl is not installed: `kubectl kustomize` cannot run here")
    out = subprocess.run(
        ["kubectl", "kustomize", str(K8S)], capture_output=True, text=True, check=True
    ).stdout
    return [d for d in yaml.safe_load_all(out) if d]


def test_every_listed_manifest_is_valid_kubernetes():
    pytest.importorskip("kubernetes_validate")
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    docs = [
        d
        for name in kustomization["resources"]
        for d in yaml.safe_load_all((K8S / name).read_text())
        if d
    ]
    docs += [yaml.safe_load((K8S / "secret-s3.example.yaml").read_text())]
    for doc in docs:
        if doc["kind"] in DASK_KINDS:
            assert doc["apiVersion"] == "kubernetes.dask.org/v1"
            continue
        _validate(doc)
    kinds = {d["kind"] for d in docs}
    assert {"Namespace", "ServiceAccount", "Role", "RoleBinding", "Job", "CronJob"} <= kinds
    assert {"DaskCluster", "Secret"} <= kinds


def test_kustomize_build_is_valid_and_self_consistent():
    pytest.importorskip("kubernetes_validate")
    docs = _built()
    names = {(d["kind"], d["metadata"]["name"]) for d in docs}
    assert all(d["metadata"].get("namespace", "boldcloud") == "boldcloud" for d in docs)
    assert not [d for d in docs if d["kind"] == "Secret"], "secrets are created by the user"
    for doc in docs:
        if doc["kind"] not in DASK_KINDS:
            _validate(doc)
        for pod in _pod_specs(doc):
            wrapped = {"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}, "spec": pod}
            _validate(wrapped)
            assert ("ServiceAccount", pod["serviceAccountName"]) in names
            for volume in pod.get("volumes", []):
                assert ("ConfigMap", volume["configMap"]["name"]) in names
            for container in pod["containers"]:
                assert container["image"].startswith("ghcr.io/"), "kustomize image not applied"
                for source in container.get("envFrom", []):
                    if "configMapRef" in source:
                        assert ("ConfigMap", source["configMapRef"]["name"]) in names
                    else:
                        assert source["secretRef"]["name"] == "boldcloud-s3"
                assert not any("SECRET" in e.get("name", "") for e in container.get("env", []))
    roles = [d for d in docs if d["kind"] == "Role"]
    dask_rules = [r for r in roles[0]["rules"] if "kubernetes.dask.org" in r["apiGroups"]]
    assert "daskclusters" in dask_rules[0]["resources"] and "create" in dask_rules[0]["verbs"]
    cron = next(d for d in docs if d["kind"] == "CronJob")
    command = _pod_specs(cron)[0]["containers"][0]["command"]
    assert command[:2] == ["boldcloud", "run"] and "--new-only" in command
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"


def test_packaged_study_for_kubernetes_is_schema_valid(tmp_path):
    from infra.study import load_study

    study = load_study(str(K8S / "study.yaml"))
    assert study.issues == [], "copy docs/examples/reference-study.yaml's changes into it"
    assert study.dataset_url.startswith("s3://") and study.store_url.startswith("s3://")


@pytest.mark.parametrize("site", ["slurm", "pbs"])
def test_hpc_example_profiles_resolve_and_render_job_scripts(site):
    config = yaml.safe_load((DEPLOY / site / "clusters.yaml").read_text())
    for name in config["profiles"]:
        adapter = make_adapter(name, user_config=config)
        assert adapter.backend == site
        kwargs = {k: v for k, v in adapter.cluster_kwargs().items() if k != "scheduler_options"}
        import dask_jobqueue

        job_cls = getattr(dask_jobqueue, adapter.cluster_class).job_cls
        script = job_cls(scheduler="tcp://10.0.0.1:8786", name="w", **kwargs).job_script()
        assert "tcp://10.0.0.1:8786" in script
        if site == "slurm":
            assert f"#SBATCH -p {config['profiles'][name]['queue']}" in script
        else:
            assert "#PBS -q workq" in script
    driver = next((DEPLOY / site).glob("boldcloud-driver.*"))
    subprocess.run(["bash", "-n", str(driver)], check=True)
    assert "boldcloud run" in driver.read_text()


def test_dockerfile_copies_what_exists_and_installs_the_cluster_extras():
    text = (DEPLOY / "Dockerfile").read_text()
    root = DEPLOY.parent
    for line in text.splitlines():
        if line.startswith("COPY "):
            for source in line.split()[1:-1]:
                assert (root / source).exists(), source
    instructions = [line.split()[0] for line in text.splitlines() if line and line[0].isupper()]
    assert "-c constraints.txt" in text and "kubernetes" in text
    assert "ENTRYPOINT" not in instructions, "dask args must not be passed to an entrypoint"
    assert set(packaged_backends()) >= {"slurm", "pbs", "gateway", "kubernetes"}
