"""Fake open inference servers (SGLang diffusion, vLLM-Omni, LightX2V), each following that
server's own HTTP contract as read from its source, run as a process that a test can SIGKILL.

  python -m tests.helpers.video_servers --flavor sglang --port 8123 --log creates.jsonl

What each imitates (sources: sgl-project/sglang python/sglang/multimodal_gen/runtime/
entrypoints/openai/video_api.py; vllm-project/vllm-omni vllm_omni/entrypoints/openai/
protocol/videos.py and docs/serving/videos_api.md; ModelTC/LightX2V lightx2v/server/api/
router.py, api/tasks/{video,common}.py, schema.py, task_manager.py):
- sglang: `POST /v1/videos` JSON, or multipart with a required `input_reference` file (400
  `{"detail"}` otherwise); the video object stays `queued` with `progress` 0 until `completed`
  (100) or `failed` (`error: {"message"}`); `DELETE` forgets the record but does not stop the
  job; `GET .../content` is 404 "Generation is still in-progress" until the file exists.
- vllm_omni: `POST /v1/videos` multipart form only (a JSON body is a 422: `prompt` missing);
  `queued` -> `in_progress` with `progress` rising per step -> `completed`; `DELETE` aborts and
  answers `{"id", "deleted": true, "object": "video.deleted"}`.
- lightx2v: `POST /v1/tasks/video/` JSON -> `{"task_id", "task_status": "pending",
  "save_result_path"}` (the request may name the task; a second task of that name is a 503),
  503 `{"detail"}` when its queue is full; one job at a time;
  `GET /v1/tasks/{id}/status` (pending, processing, completed, failed, cancelled, `error`);
  `/result` streams the MP4; `DELETE /v1/tasks/{id}` -> `{"stop_status", "reason"}`;
  `GET /v1/service/status`.

Every fake makes real MP4s (PyAV) of the size and frame count asked (LightX2V: of its own
configured size), fails a job whose prompt contains `[fail]`, and appends one JSON line per
create to `--log` with how many jobs it held at that moment, so a test can count creates
across kills and check that no server was given more than its share.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import secrets
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import uvicorn
from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse
from starlette.datastructures import UploadFile as StarletteUpload

from opendance.media.video import encode_mp4

ACTIVE = ("queued", "in_progress", "pending", "processing")


class Jobs:
    """The server's in-memory job table (lost on a kill, as the real ones are)."""

    def __init__(self, folder: Path, log: Path | None, steps: int, step_seconds: float) -> None:
        self.folder = folder
        self.log = log
        self.steps = steps
        self.step_seconds = step_seconds
        self.jobs: dict[str, dict[str, Any]] = {}
        self.lock = threading.Lock()
        self.gpu = threading.Lock()  # one job on the "GPU" at a time

    def active(self) -> int:
        return sum(1 for job in self.jobs.values() if job["status"] in ACTIVE)

    def record(self, event: dict[str, Any]) -> None:
        event["at"] = time.time()
        if self.log is not None:
            with self.log.open("a") as out:
                out.write(json.dumps(event) + "\n")

    def run(
        self, job_id: str, width: int, height: int, frames: int, fps: int, running: str
    ) -> None:
        """Queue, step, encode: a thread per job, one at a time on the GPU lock."""
        job = self.jobs[job_id]
        with self.gpu:
            if job["status"] not in ACTIVE:
                return  # aborted while queued
            job["status"] = running
            self.record({"event": "start", "id": job_id})
            for step in range(self.steps):
                time.sleep(self.step_seconds)
                if job.get("aborted"):
                    return
                job["progress_steps"] = step + 1
            if "[fail]" in job["prompt"]:
                job["status"] = "failed"
                job["error"] = "CUDA error: an illegal memory access was encountered"
                return
            path = self.folder / f"{job_id}.mp4"
            encode_mp4(_frames(width, height, frames), path, width, height, fps, preset="ultrafast")
            job["file"] = str(path)
            job["status"] = "completed"
            job["completed_at"] = int(time.time())
            self.record({"event": "complete", "id": job_id})


def _frames(width: int, height: int, count: int) -> Any:
    for index in range(count):
        frame = np.zeros((height, width, 3), dtype=np.uint8)
        frame[..., 0] = (index * 9) % 256
        frame[: height // 2, :, 1] = 200
        yield frame


def _size(text: str | None, default: str) -> tuple[int, int]:
    width, _, height = (text or default).partition("x")
    return int(width), int(height)


def openai_app(flavor: str, jobs: Jobs) -> FastAPI:
    app = FastAPI()
    multipart_only = flavor == "vllm_omni"
    running = "in_progress" if flavor == "vllm_omni" else "queued"

    def video_object(job_id: str) -> dict[str, Any]:
        job = jobs.jobs[job_id]
        if flavor == "vllm_omni":
            progress = int(100 * job.get("progress_steps", 0) / jobs.steps)
        else:
            progress = 0  # SGLang writes 100 only when the job completes
        body: dict[str, Any] = {
            "id": job_id,
            "object": "video",
            "model": job["model"],
            "status": job["status"],
            "progress": 100 if job["status"] == "completed" else progress,
            "created_at": job["created_at"],
            "size": job["size"],
            "seconds": str(job["seconds"]),
            "quality": "standard",
        }
        if job["status"] == "completed":
            body["completed_at"] = job["completed_at"]
        if job["status"] == "failed":
            body["error"] = (
                {"code": "generation_failed", "message": job["error"]}
                if flavor == "vllm_omni"
                else {"message": job["error"]}
            )
        return body

    def start(fields: dict[str, Any], has_file: bool) -> dict[str, Any]:
        job_id = ("video_gen_" + secrets.token_hex(16)) if multipart_only else secrets.token_hex(16)
        width, height = _size(fields.get("size"), "720x1280")
        fps = int(fields.get("fps") or 24)
        seconds = int(fields.get("seconds") or 4)
        frames = int(fields.get("num_frames") or fps * seconds)
        with jobs.lock:
            held = jobs.active()
            jobs.jobs[job_id] = {
                "status": "queued",
                "prompt": str(fields.get("prompt") or ""),
                "model": fields.get("model") or "sora-2",
                "created_at": int(time.time()),
                "size": f"{width}x{height}",
                "seconds": seconds,
            }
        jobs.record(
            {"event": "create", "id": job_id, "held_before": held, "image": has_file,
             "fields": sorted(fields), "seed": fields.get("seed")}
        )  # fmt: skip
        threading.Thread(
            target=jobs.run, args=(job_id, width, height, frames, fps, running), daemon=True
        ).start()
        return video_object(job_id)

    @app.post("/v1/videos")
    async def create_video(request: Request) -> Any:
        content_type = request.headers.get("content-type", "")
        if "multipart/form-data" in content_type:
            form = await request.form()
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            prompt = fields.get("prompt")
            upload = form.get("input_reference")
            input_reference = upload if isinstance(upload, StarletteUpload) else None
            if not prompt:
                raise HTTPException(400 if not multipart_only else 422, "prompt is required")
            if flavor != "vllm_omni" and input_reference is None:
                raise HTTPException(400, "input_reference file is required")
            return start(fields, input_reference is not None)
        if multipart_only:
            return JSONResponse(
                {
                    "detail": [
                        {"type": "missing", "loc": ["body", "prompt"], "msg": "Field required"}
                    ]
                },
                status_code=422,
            )
        try:
            body = await request.json()
        except ValueError:
            body = {}
        if not isinstance(body, dict) or not isinstance(body.get("prompt"), str):
            raise HTTPException(400, "Invalid request body: prompt is required")
        return start(body, False)

    @app.get("/v1/videos/{video_id}")
    async def retrieve(video_id: str) -> Any:
        if video_id not in jobs.jobs:
            raise HTTPException(404, "Video not found")
        return video_object(video_id)

    @app.delete("/v1/videos/{video_id}")
    async def delete(video_id: str) -> Any:
        with jobs.lock:
            job = jobs.jobs.get(video_id)
            if job is None:
                raise HTTPException(404, "Video not found")
            body = video_object(video_id)
            jobs.record({"event": "delete", "id": video_id, "status": job["status"]})
            if flavor == "vllm_omni":
                job["aborted"] = True
                if job["status"] in ACTIVE:
                    job["status"] = "failed"
                    job["error"] = "aborted"
                del jobs.jobs[video_id]
                return {"id": video_id, "deleted": True, "object": "video.deleted"}
            jobs.jobs.pop(video_id)  # SGLang forgets it; the GPU work goes on
            body["status"] = "deleted"
            return body

    @app.get("/v1/videos/{video_id}/content")
    async def content(video_id: str) -> Any:
        job = jobs.jobs.get(video_id)
        if job is None:
            raise HTTPException(404, "Video not found")
        if not job.get("file"):
            raise HTTPException(404, "Generation is still in-progress")
        return FileResponse(job["file"], media_type="video/mp4")

    @app.get("/health")
    async def health() -> Any:
        return {"status": "ok"}

    return app


def lightx2v_app(jobs: Jobs, size: str, max_queue: int, hang_first: float = 0.0) -> FastAPI:
    app = FastAPI()
    width, height = _size(size, "832x480")
    hangs = [hang_first] if hang_first else []

    def status_of(task_id: str) -> dict[str, Any]:
        job = jobs.jobs[task_id]
        return {
            "task_id": task_id,
            "status": job["status"],
            "start_time": job["created_at"],
            "end_time": job.get("completed_at"),
            "error": job.get("error"),
            "save_result_path": task_id + ".mp4",
        }

    @app.post("/v1/tasks/video/")
    async def create(request: Request) -> Any:
        body = await request.json()
        with jobs.lock:
            held = jobs.active()
            task_id = str(body.get("task_id") or secrets.token_hex(8))
            if task_id in jobs.jobs:
                raise HTTPException(503, f"Task ID {task_id} already exists")
            if held >= max_queue:
                raise HTTPException(503, f"Task queue is full (max {max_queue} tasks)")
            jobs.jobs[task_id] = {
                "status": "pending",
                "prompt": str(body.get("prompt", "")),
                "created_at": int(time.time()),
            }
        jobs.record(
            {"event": "create", "id": task_id, "held_before": held, "fields": sorted(body),
             "image": bool(body.get("image_path")), "seed": body.get("seed")}
        )  # fmt: skip
        frames = int(body.get("target_video_length", 81))
        fps = int(body.get("target_fps") or 16)
        threading.Thread(
            target=jobs.run, args=(task_id, width, height, frames, fps, "processing"), daemon=True
        ).start()
        if hangs:
            await asyncio.sleep(hangs.pop())  # took the task, answers too late for the client
        return {"task_id": task_id, "task_status": "pending", "save_result_path": task_id}

    @app.get("/v1/tasks/{task_id}/status")
    async def status(task_id: str) -> Any:
        if task_id not in jobs.jobs:
            raise HTTPException(404, "Task not found")
        return status_of(task_id)

    @app.get("/v1/tasks/{task_id}/result")
    async def result(task_id: str) -> Any:
        job = jobs.jobs.get(task_id)
        if job is None:
            raise HTTPException(404, "Task not found")
        if job["status"] != "completed":
            raise HTTPException(404, "Task not completed")
        return FileResponse(job["file"], media_type="video/mp4")

    @app.delete("/v1/tasks/{task_id}")
    async def stop(task_id: str) -> Any:
        with jobs.lock:
            job = jobs.jobs.get(task_id)
            jobs.record({"event": "delete", "id": task_id, "status": job and job["status"]})
            if job is None or job["status"] in ("completed", "failed"):
                return {
                    "stop_status": "do_nothing",
                    "reason": "Task not found or already completed.",
                }
            job["aborted"] = True
            job["status"] = "cancelled"
            job["error"] = "Task cancelled by user"
        return {"stop_status": "success", "reason": "Task stopped successfully."}

    @app.get("/v1/service/status")
    async def service_status() -> Any:
        busy = any(job["status"] == "processing" for job in jobs.jobs.values())
        return {"service_status": "busy" if busy else "idle", "pending_tasks": jobs.active()}

    return app


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--flavor", choices=["sglang", "vllm_omni", "lightx2v"], required=True)
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--log", type=Path)
    parser.add_argument("--folder", type=Path, default=Path("."))
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--step-seconds", type=float, default=0.2)
    parser.add_argument("--size", default="832x480", help="LightX2V's configured size")
    parser.add_argument("--max-queue", type=int, default=10)
    parser.add_argument(
        "--hang-first-create", type=float, default=0.0, help="LightX2V: answer late, once"
    )
    args = parser.parse_args()
    args.folder.mkdir(parents=True, exist_ok=True)
    jobs = Jobs(args.folder, args.log, args.steps, args.step_seconds)
    app = (
        lightx2v_app(jobs, args.size, args.max_queue, args.hang_first_create)
        if args.flavor == "lightx2v"
        else openai_app(args.flavor, jobs)
    )
    asyncio.run(uvicorn.Server(uvicorn.Config(app, port=args.port, log_level="warning")).serve())


if __name__ == "__main__":
    main()
