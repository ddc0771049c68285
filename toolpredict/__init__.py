"""toolpredict: tool-call duration prediction and KV time-to-live policies (Continuum).

Not built yet: it lands with its own issue; the engine already carries each request's
`ProgramHint`, which these policies will read.
"""
