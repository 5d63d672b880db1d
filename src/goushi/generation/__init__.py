"""The parts of the generation engine (goushi.engine puts them together).

options     SampleConfig, Generation, StreamEvent
processors  repetition penalty, n-gram ban, top-k / top-p / min-p, inverse-CDF draw
text        token ids -> text without half characters, stop strings across tokens
runner      prefill + KV-cache decode over a left-padded batch, sliding context window
sampling    greedy and sampled decoding of a batch, one step at a time
beam        beam search
"""
