"""ICPL: in-context preference learning with LLM-written reward programs, run in a sandbox.

- :mod:`pbrl.icpl.sandbox` runs untrusted reward code in a confined child process;
- :mod:`pbrl.icpl.llm` is the OpenAI-compatible chat client (cache, retries) and the bundled
  local model server;
- :mod:`pbrl.icpl.context` describes an environment to the LLM, generated from the env;
- :mod:`pbrl.icpl.prompting` holds the prompts, code extraction and trace summaries;
- :mod:`pbrl.icpl.train` trains one policy on one program; :mod:`pbrl.icpl.loop` is the loop.
"""

from pbrl.icpl.sandbox import ProgramError, RewardOutput, RewardSandbox, check_source

__all__ = ["ProgramError", "RewardOutput", "RewardSandbox", "check_source"]
