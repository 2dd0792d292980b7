"""Reports in S3, as pods write and a merge Job reads them: `loadgen run --report
s3://...`, `loadgen report merge s3://BUCKET/PREFIX/ --expect N --wait ...`, and
the one-line errors for a bad URL, a missing bucket or no credentials, all before
any load. S3 is moto's server on loopback, reached by boto3 in every process
through AWS_ENDPOINT_URL_S3, as MinIO or a real bucket would be."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from xml.etree import ElementTree

import pytest

from tests.brokers import free_port
from tests.conftest import assert_user_error, run_loadgen
from tests.moto_aws import CREDENTIALS, client, no_credentials_env
from tests.test_merge_sources import FAILS, PASSES, shard_reports
from tests.test_run import _scenario

BUCKET = "loadgen-results"


def s3_env(moto_url: str, tmp_path: Path) -> dict[str, str]:
    """moto's credentials and endpoint, and nothing of this machine's ~/.aws."""
    return no_credentials_env(tmp_path) | CREDENTIALS | {"AWS_ENDPOINT_URL_S3": moto_url}


@pytest.fixture
def aws_env(moto, tmp_path) -> dict[str, str]:
    return s3_env(moto, tmp_path)


@pytest.fixture
def bucket(moto):
    s3 = client(moto, "s3")
    s3.create_bucket(Bucket=BUCKET)
    return s3


def upload(s3, key: str, report: dict) -> None:
    s3.put_object(Bucket=BUCKET, Key=key, Body=json.dumps(report).encode())


def downloaded(s3, key: str) -> dict:
    return json.loads(s3.get_object(Bucket=BUCKET, Key=key)["Body"].read())


# --- loadgen run ----------------------------------------------------------------


def test_a_runs_report_and_html_go_to_s3(tmp_path, mosquitto, device_ca, bucket, aws_env):
    scenario = _scenario(tmp_path, mosquitto, device_ca)
    result = run_loadgen(
        "run",
        scenario,
        "--count",
        "30",
        "--workers",
        "1",
        "--report",
        f"s3://{BUCKET}/run-1/shard-0.json",
        "--html",
        f"s3://{BUCKET}/run-1/shard-0.html",
        env=aws_env,
    )
    assert result.code == 0, result.err
    assert f"report written to s3://{BUCKET}/run-1/shard-0.json" in result.out
    report = downloaded(bucket, "run-1/shard-0.json")
    assert report["devices"] == 30
    assert report["format"] == "loadgen-report/1"
    page = bucket.get_object(Bucket=BUCKET, Key="run-1/shard-0.html")
    assert page["ContentType"].startswith("text/html")
    assert page["Body"].read().lstrip().lower().startswith(b"<!doctype html")


def test_a_missing_bucket_is_one_line_naming_report_before_any_load(
    tmp_path, mosquitto, device_ca, aws_env
):
    scenario = _scenario(tmp_path, mosquitto, device_ca)
    url = "s3://no-such-bucket/r.json"
    result = run_loadgen("run", scenario, "--report", url, env=aws_env)
    assert_user_error(result, f"--report {url}: no such bucket no-such-bucket")
    assert not (tmp_path / "fleet").exists()  # nothing minted, nothing ran


def test_no_credentials_is_one_line_naming_the_option(tmp_path, mosquitto, device_ca, moto):
    scenario = _scenario(tmp_path, mosquitto, device_ca)
    env = no_credentials_env(tmp_path) | {"AWS_ENDPOINT_URL_S3": moto}
    result = run_loadgen("run", scenario, "--html", f"s3://{BUCKET}/r.html", env=env)
    assert_user_error(result, "--html: no AWS credentials found")
    assert result.err.startswith("loadgen: error: --html: no AWS credentials found (")
    assert not (tmp_path / "fleet").exists()


def test_an_s3_nobody_answers_is_one_line(tmp_path, mosquitto, device_ca):
    scenario = _scenario(tmp_path, mosquitto, device_ca)
    env = no_credentials_env(tmp_path) | CREDENTIALS | {"AWS_ENDPOINT_URL_S3": "http://127.0.0.1:9"}
    result = run_loadgen("run", scenario, "--report", f"s3://{BUCKET}/r.json", env=env)
    assert_user_error(result, f"--report s3://{BUCKET}/r.json: cannot reach S3")
    assert not (tmp_path / "fleet").exists()


def test_an_unknown_aws_profile_is_one_line_naming_the_option_and_variable(
    tmp_path, mosquitto, device_ca
):
    scenario = _scenario(tmp_path, mosquitto, device_ca)
    env = no_credentials_env(tmp_path) | {"AWS_PROFILE": "nope"}
    result = run_loadgen("run", scenario, "--report", f"s3://{BUCKET}/r.json", env=env)
    assert_user_error(result, "--report: AWS_PROFILE: The config profile (nope) could not be found")
    assert not (tmp_path / "fleet").exists()


def test_an_aws_config_file_botocore_cannot_parse_is_one_line_naming_the_option(
    tmp_path, mosquitto, device_ca
):
    scenario = _scenario(tmp_path, mosquitto, device_ca)
    config = tmp_path / "config"
    config.write_bytes(b"\xff\xfe garbage [")
    env = no_credentials_env(tmp_path) | {"AWS_CONFIG_FILE": str(config)}
    result = run_loadgen("run", scenario, "--report", f"s3://{BUCKET}/r.json", env=env)
    assert_user_error(result, f"--report: Unable to parse config file: {config}")
    assert not (tmp_path / "fleet").exists()


def test_an_s3_endpoint_variable_that_is_no_url_is_one_line_naming_it(
    tmp_path, mosquitto, device_ca
):
    scenario = _scenario(tmp_path, mosquitto, device_ca)
    env = no_credentials_env(tmp_path) | CREDENTIALS | {"AWS_ENDPOINT_URL_S3": "notaurl"}
    result = run_loadgen("run", scenario, "--report", f"s3://{BUCKET}/r.json", env=env)
    assert_user_error(result, "--report: AWS_ENDPOINT_URL_S3 notaurl: not an http(s) URL")
    assert not (tmp_path / "fleet").exists()


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("s3://", "no bucket (s3://BUCKET/KEY)"),
        ("s3:///r.json", "no bucket (s3://BUCKET/KEY)"),
        ("s3://Results_2026/r.json", "'Results_2026' is not an S3 bucket name"),
        (f"s3://{BUCKET}/runs/", "give the object's key too (s3://BUCKET/KEY)"),
        (f"s3://{BUCKET}", "give the object's key too (s3://BUCKET/KEY)"),
        ("gs://bucket/r.json", "a local path or an s3://BUCKET/KEY URL"),
        (f"s3://{BUCKET}/{'k' * 1025}", "a key longer than S3's 1,024 bytes"),
    ],
)
def test_a_bad_url_is_one_line_naming_the_option(tmp_path, mosquitto, device_ca, url, message):
    scenario = _scenario(tmp_path, mosquitto, device_ca)
    env = no_credentials_env(tmp_path)  # refused before S3 is asked anything
    assert_user_error(
        run_loadgen("run", scenario, "--report", url, env=env), f"--report {url[:60]}", message
    )
    out = tmp_path / "m.json"
    assert_user_error(
        run_loadgen("report", "merge", tmp_path, "-o", out, "--html", url, env=env),
        f"--html {url[:60]}",
    )
    assert not (tmp_path / "fleet").exists()


def test_capacity_refuses_a_missing_bucket_before_any_load(tmp_path, mosquitto, device_ca, aws_env):
    scenario = _scenario(tmp_path, mosquitto, device_ca)
    url = "s3://no-such-bucket/capacity.json"
    result = run_loadgen(
        "capacity", scenario, "--slo", "p99(provision) < 2s", "--report", url, env=aws_env
    )
    assert_user_error(result, f"--report {url}: no such bucket no-such-bucket")
    assert not (tmp_path / "fleet").exists()


# --- loadgen report merge -----------------------------------------------------------


def test_merge_reads_every_shard_under_a_prefix_and_writes_to_s3(tmp_path, bucket, aws_env):
    for report in shard_reports(3):
        upload(bucket, f"run-7/shard-{report['shard']['index']}.json", report)
    upload(bucket, "run-7/notes/readme.txt", {"not": "a report"})
    upload(bucket, "run-8/shard-0.json", shard_reports(1)[0])  # another run's prefix
    args = (
        "report", "merge", f"s3://{BUCKET}/run-7/", "--expect", "3",
        "-o", f"s3://{BUCKET}/run-7/merged.json", "--html", f"s3://{BUCKET}/run-7/merged.html",
        "--gate", PASSES,
    )  # fmt: skip
    for _ in range(2):  # the second merge lists the first one's output too, and skips it
        result = run_loadgen(*args, env=aws_env)
        assert result.code == 0, result.err
        assert f"3 reports merged into s3://{BUCKET}/run-7/merged.json: 120 devices" in result.out
    merged = downloaded(bucket, "run-7/merged.json")
    assert merged["devices"] == 120
    assert [g["passed"] for g in merged["gates"]] == [True]


def test_a_merges_junit_and_summary_go_to_s3_as_a_merge_job_writes_them(tmp_path, bucket, aws_env):
    for report in shard_reports(2):
        upload(bucket, f"run-9/shard-{report['shard']['index']}.json", report)
    result = run_loadgen(
        *("report", "merge", f"s3://{BUCKET}/run-9/", "--expect", "2"),
        *("-o", f"s3://{BUCKET}/run-9/merged.json", "--gate", PASSES, "--gate", FAILS),
        *("--junit", f"s3://{BUCKET}/run-9/gates.xml"),
        *("--summary-md", f"s3://{BUCKET}/run-9/summary.md"),
        env=aws_env,
    )
    assert result.code == 1, result.err  # a gate failed: the files say which
    junit = bucket.get_object(Bucket=BUCKET, Key="run-9/gates.xml")
    assert junit["ContentType"] == "application/xml"
    suite = ElementTree.fromstring(junit["Body"].read())
    assert (suite.get("tests"), suite.get("failures")) == ("2", "1")
    summary = bucket.get_object(Bucket=BUCKET, Key="run-9/summary.md")["Body"].read().decode()
    assert FAILS in summary and PASSES in summary


def test_merge_from_s3_keys_and_a_local_file_together(tmp_path, bucket, aws_env):
    first, second, third = shard_reports(3)
    upload(bucket, "a/0.json", first)
    upload(bucket, "b/1.json", second)
    local = tmp_path / "2.json"
    local.write_text(json.dumps(third))
    out = tmp_path / "merged.json"
    result = run_loadgen(
        "report",
        "merge",
        f"s3://{BUCKET}/a/0.json",
        f"s3://{BUCKET}/b/1.json",
        local,
        "--expect",
        "3",
        "-o",
        out,
        env=aws_env,
    )
    assert result.code == 0, result.err
    assert json.loads(out.read_text())["devices"] == 120


def test_a_missing_shard_under_a_prefix_is_exit_1_naming_it(tmp_path, bucket, aws_env):
    reports = shard_reports(3)
    for report in (reports[0], reports[2]):
        upload(bucket, f"run/shard-{report['shard']['index']}.json", report)
    result = run_loadgen(
        "report",
        "merge",
        f"s3://{BUCKET}/run/",
        "--expect",
        "3",
        "-o",
        f"s3://{BUCKET}/run/merged.json",
        env=aws_env,
    )
    assert result.code == 1, (result.out, result.err)
    assert "--expect 3: missing shard 1 (2 of 3 shards found" in result.err
    assert "Contents" not in bucket.list_objects_v2(Bucket=BUCKET, Prefix="run/merged")


def test_wait_sees_a_shard_report_uploaded_after_the_merge_started(tmp_path, bucket, aws_env):
    first, second = shard_reports(2)
    upload(bucket, "run/shard-0.json", first)
    merge_job = subprocess.Popen(
        [sys.executable, "-m", "loadgen", "report", "merge", f"s3://{BUCKET}/run/",
         "--expect", "2", "--wait", "2m", "-o", f"s3://{BUCKET}/merged.json", "--gate", FAILS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=aws_env,
    )  # fmt: skip
    try:
        assert merge_job.stderr is not None
        waiting = merge_job.stderr.readline()  # the merge is waiting: a real condition
        assert "1 of 2 shards found" in waiting, waiting
        upload(bucket, "run/shard-1.json", second)  # the last pod, done late
        out, err = merge_job.communicate(timeout=120)
    finally:
        merge_job.kill()
        merge_job.wait()
    assert merge_job.returncode == 1, err  # the gate fails: the pipeline's one exit code
    assert f"FAIL: {FAILS}" in out
    assert downloaded(bucket, "merged.json")["devices"] == 120


def test_wait_rides_out_an_s3_that_answers_only_later(tmp_path, moto):
    """The merge Job may start before its store answers (or the store may
    blip): while it waits, S3 not answering is tried again, not the end. (A
    second moto server, started late on a port chosen first, shares the
    process's moto state: the ``moto`` fixture empties it afterwards.)"""
    from moto.server import ThreadedMotoServer

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    merged = tmp_path / "merged.json"
    merge_job = subprocess.Popen(
        [sys.executable, "-m", "loadgen", "report", "merge", f"s3://{BUCKET}/run/",
         "--expect", "2", "--wait", "3m", "-o", str(merged), "--gate", FAILS],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=s3_env(url, tmp_path),
    )  # fmt: skip
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    try:
        assert merge_job.stderr is not None
        told = merge_job.stderr.readline()  # it tried, and waits: a real condition
        assert "cannot reach S3" in told and "trying again" in told, told
        server.start()
        s3 = client(url, "s3")
        s3.create_bucket(Bucket=BUCKET)
        for index, report in enumerate(shard_reports(2)):
            upload(s3, f"run/shard-{index}.json", report)
        out, err = merge_job.communicate(timeout=180)
    finally:
        merge_job.kill()
        merge_job.wait()
        server.stop()
    assert merge_job.returncode == 1, err  # the gate's verdict, not S3's
    assert f"FAIL: {FAILS}" in out
    assert json.loads(merged.read_text())["devices"] == 120


def test_an_s3_that_never_answers_ends_the_wait_at_its_deadline(tmp_path):
    env = s3_env(f"http://127.0.0.1:{free_port()}", tmp_path)
    result = run_loadgen(
        "report", "merge", f"s3://{BUCKET}/run/", "--expect", "2", "--wait", "1s",
        "-o", tmp_path / "merged.json", env=env,
    )  # fmt: skip
    assert result.code == 2, result.err
    assert "cannot reach S3" in result.err.strip().splitlines()[-1]
    assert "Traceback" not in result.err
    assert not (tmp_path / "merged.json").exists()


def test_merge_names_a_key_that_is_not_there(tmp_path, bucket, aws_env):
    url = f"s3://{BUCKET}/run/shard-0.json"
    result = run_loadgen("report", "merge", url, "-o", tmp_path / "m.json", env=aws_env)
    assert_user_error(result, f"{url}: no such report (a prefix ends with /)")


def test_merge_names_a_bucket_that_is_not_there(tmp_path, aws_env):
    result = run_loadgen(
        "report", "merge", "s3://no-such-bucket/run/", "-o", tmp_path / "m.json", env=aws_env
    )
    assert_user_error(result, "s3://no-such-bucket/run/: cannot list: no such bucket")


def test_a_report_in_s3_that_is_not_one_is_named_by_its_url(tmp_path, bucket, aws_env):
    bucket.put_object(Bucket=BUCKET, Key="run/shard-0.json", Body=b"<html>")
    result = run_loadgen(
        "report", "merge", f"s3://{BUCKET}/run/", "-o", tmp_path / "m", env=aws_env
    )
    assert_user_error(result, f"s3://{BUCKET}/run/shard-0.json: not a JSON report")


def test_report_html_writes_to_s3(tmp_path, bucket, aws_env):
    path = tmp_path / "r.json"
    path.write_text(json.dumps(shard_reports(1)[0]))
    url = f"s3://{BUCKET}/pages/r.html"
    result = run_loadgen("report", "html", path, "-o", url, env=aws_env)
    assert result.code == 0, result.err
    assert f"HTML report written to {url}" in result.out
    body = bucket.get_object(Bucket=BUCKET, Key="pages/r.html")["Body"].read()
    assert b"<html" in body.lower()


def test_the_region_need_not_be_set(tmp_path, bucket, aws_env):
    """A pod often has credentials and no region: S3 answers anyway."""
    assert not {k for k in aws_env if k in ("AWS_REGION", "AWS_DEFAULT_REGION")}
    path = tmp_path / "r.json"
    path.write_text(json.dumps(shard_reports(1)[0]))
    result = run_loadgen("report", "merge", path, "-o", f"s3://{BUCKET}/m.json", env=aws_env)
    assert result.code == 0, result.err


def test_a_merge_job_with_a_missing_output_bucket_fails_at_once_not_after_its_wait(
    tmp_path, bucket, aws_env
):
    url = "s3://no-such-bucket/merged.json"
    result = run_loadgen(
        "report", "merge", f"s3://{BUCKET}/run/", "--expect", "3", "--wait", "1h", "-o", url,
        env=aws_env,
    )  # fmt: skip
    assert_user_error(result, f"--out {url}: no such bucket no-such-bucket")


@pytest.fixture
def write_only(moto, bucket, tmp_path, monkeypatch):
    """The environment of a pod whose role may put objects in the bucket and do
    nothing else (not even list it), with moto enforcing IAM from now on."""
    from moto import settings

    iam = client(moto, "iam")
    iam.create_user(UserName="pod")
    iam.put_user_policy(
        UserName="pod",
        PolicyName="put-reports",
        PolicyDocument=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Action": "s3:PutObject",
                        "Resource": f"arn:aws:s3:::{BUCKET}/reports/*",
                    }
                ],
            }
        ),
    )
    key = iam.create_access_key(UserName="pod")["AccessKey"]
    monkeypatch.setattr(settings, "INITIAL_NO_AUTH_ACTION_COUNT", 0)
    env = s3_env(moto, tmp_path)
    env["AWS_ACCESS_KEY_ID"], env["AWS_SECRET_ACCESS_KEY"] = (
        key["AccessKeyId"],
        key["SecretAccessKey"],
    )
    yield env
    monkeypatch.undo()  # the test's own client reads what was written, unchecked


def _one_report(tmp_path: Path) -> Path:
    path = tmp_path / "r.json"
    path.write_text(json.dumps(shard_reports(1)[0]))
    return path


def test_a_role_that_may_write_but_not_list_is_warned_and_the_report_written(
    tmp_path, bucket, write_only, monkeypatch
):
    url = f"s3://{BUCKET}/reports/m.json"
    result = run_loadgen("report", "merge", _one_report(tmp_path), "-o", url, env=write_only)
    assert result.code == 0, result.err
    assert result.err.splitlines() == [
        f"loadgen: warning: --out {url}: cannot check bucket {BUCKET} (access denied); "
        "the write at the end may fail"
    ]
    assert f"1 report merged into {url}" in result.out
    monkeypatch.undo()  # IAM unchecked again, for this test's own client
    assert downloaded(bucket, "reports/m.json")["devices"] == 120


def test_a_write_refused_at_the_end_is_one_line_and_exit_1(tmp_path, bucket, write_only):
    url = f"s3://{BUCKET}/elsewhere/m.json"  # outside what the role may write
    result = run_loadgen("report", "merge", _one_report(tmp_path), "-o", url, env=write_only)
    assert result.code == 1, (result.out, result.err)
    assert result.err.splitlines()[-1] == (
        f"loadgen: failed: --out {url}: cannot write: access denied to bucket {BUCKET}"
    )
