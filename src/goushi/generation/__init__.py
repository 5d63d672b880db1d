"""The parts of the generation engine (goushi.engine puts them together).

options     SampleConfig (what to do), Generation (a finished row), StreamEvent (one step of one row)
processors  repetition penalty, n-gram ban, top-k / top-p / min-p, inverse-CDF draw; process_scores, the
            chain of rules every strategy applies first
text        token ids -> text without half characters, stop strings across tokens
runner      prefill + KV-cache decode over a left-padded batch, sliding context window
sampling    greedy and sampled decoding of a batch of rows (RowSpec -> Row), one step at a time
beam        beam search

A row is one (prompt, sample) pair; the engine numbers rows prompt-major and gives each its seed.
"""
