"""Ray entrypoints attach to the cluster of the job they run in, unless told otherwise."""

from facetrain.jobs.ray.entrypoint import with_cluster_address


def test_inside_a_ray_job_the_cluster_is_used(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert with_cluster_address(["src", "--out", "o"], "--ray-address") == [
        "src",
        "--out",
        "o",
        "--ray-address",
        "auto",
    ]


def test_a_given_address_is_kept_in_either_spelling(monkeypatch):
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    for argv in (["s", "--ray-address", "ray://x:10001"], ["s", "--ray-address=ray://x:10001"]):
        assert with_cluster_address(argv, "--ray-address") == argv


def test_outside_a_ray_job_nothing_is_added(monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    assert with_cluster_address(["s", "--out", "o"], "--ray-address") == ["s", "--out", "o"]
