"""The worker (`patient-twin worker`): one reading's path through it, one module per stage.

1. `app`: the Faust application, `Worker`, one method per stage. Its agent takes batches of
   `vitals.raw` and `observations` events (`catchup` gathers bigger batches while a backlog
   lasts; `offsets` re-reads what a rebalance dropped), and its timers check liveness, alert
   timers and broker losses.
2. `decoder`: the batch decoded and validated in a child process (invalid messages become dead
   letters with their reason), into one columnar batch of readings (`batch`).
3. `admission`: only admitted patients' readings from their paired devices go on.
4. `process`: the vectorised twin step (`twin.bank`) and the alert engine (`twin.alerts`) over
   the batch, giving the twins' records, twin.state messages and alert events.
5. `coalesce`: outputs per patient at the rate people and stores need: twin.state at most every
   TWIN_STATE_INTERVAL_S (at once on a band or alert change), the changelog once per commit
   interval, each batch's offsets committed only once both are in Kafka.
6. `changelog`: the twins written to the table and its changelog, and twin.state sent, a record
   batch per partition; `sink` writes readings, twin states and alerts to InfluxDB.
`liveness` and `metrics` are the worker's health and its Prometheus endpoint
(`streams.compat.faust_direct_handover` hands Faust's fetched messages to the stream without
four tasks each).

Nothing here imports the dashboard, the devices or the benchmarks (import-linter contract).
"""
