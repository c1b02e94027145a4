"""The arq peer: relay's ingest → queue → deliver pipeline rebuilt on arq, for the benchmarks.

arq pins redis<6, so these modules (except `shared`) run in a venv of their own,
bench/.arq-venv, made and driven by `bench.peer_infra`. See "Peer: arq" in bench/README.md.

    app.py      POST /hooks/generic: relay's signature check and normalization, then enqueue_job
    worker.py   arq worker: POST each envelope's Letta body with relay's client, judged by relay's policy
    prefill.py  write n jobs straight into arq's queue (for the drain benchmark)
    shared.py   what both sides agree on (route, settings, job name); relay's pure modules only
    smoke.py    end-to-end check: 200 signed webhooks in, the same 200 Letta bodies out
"""
