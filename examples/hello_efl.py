"""The README's Python example: EFL steps on numpy arrays (ctypes binding, no compiled extension)."""
import numpy as np
import efl

rng = np.random.default_rng(0)
n, c = 2000, 80
logits = rng.normal(-4.0, 2.5, size=(n, c)).astype(np.float32)
labels = np.where(rng.random(n) < 0.1, rng.integers(1, c + 1, n), 0).astype(np.int32)  # 0 = background

loss = efl.EqualizedFocalLoss(c, gamma=2.0, alpha=0.25, scale_factor=8.0)
for step in range(3):
    value, grad = loss.step(logits, labels, normalizer=max(1, int((labels > 0).sum())))
    print("step %d: loss %.5f, |grad| %.3e" % (step, value, np.abs(grad).sum()))
print("eval loss (state untouched): %.5f" % loss.forward(logits, labels, normalizer=max(1, int((labels > 0).sum()))))
print("pos_neg of the 5 first classes:", np.round(loss.pos_neg[:5], 4))
