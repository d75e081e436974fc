"""What drives a running Triton for the commands and the tests: a client, a stand-in engine, load.

  llm_client.py     a tritonclient client for the ensemble API (gRPC streaming, HTTP generate);
                    also a worked example for API users
  standin.py        a built repository with tensorrt_llm replaced by standin_engine/, a no-cost engine
                    whose every token is known in advance
  loadgen.py        streams against the stand-in, each checked in full, with the server's CPU watched
  gateway_load.py   the same through the OpenAI gateway

Used by tools/bench.py, tools/soak.py, tools/stub_death.py, tools/demo.py and tests/.
"""
