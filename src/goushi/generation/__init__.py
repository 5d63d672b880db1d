"""The parts of the generation engine (goushi.engine puts them together).

options     SampleConfig (what to do), Generation (a finished row), StreamEvent (one step of one row)
processors  repetition penalty, n-gram ban, top-k / top-p / min-p, inverse-CDF draw; process_scores, the
            chain of rules every strategy applies first
text        token ids -> text without half characters, stop strings across tokens
slots       a fixed-size KV cache of slots: prompts prefilled alone and placed in a free slot, one decode step for
            every occupied slot (rows at their own lengths; a row's logits the same bits alone and batched)
solo        one row on the model's single-row kernels, Slots' interface: a lone Engine call (faster, not
            bit-equal to the batch)
batch       DecodeBatch: greedy and sampled decoding of rows of one or many requests, each with its own settings,
            joining and leaving at token boundaries (continuous batching; Engine.stream and goushi serve)
sampling    what decoding works on: Vocab, RowSpec (a row to decode), Row (a row being decoded)
runner      prefill + KV-cache decode over a left-padded batch, sliding context window (beam search)
beam        beam search (one request at a time)

A row is one (prompt, sample) pair; the engine numbers rows prompt-major and gives each its seed.
"""
