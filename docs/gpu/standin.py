# Stand-ins for the distilled drafters' weights (38 MB each stay home: the call's tree limit):
# drafters initialized from the target's layers 0/10/19/29, saved through the same writer, so the
# registry loads them through the real path. Exactness never depends on a drafter's weights.
import torch
from specviz.models import load
from specviz.drafters.distilled import new_model, save, default_weights
m, _, _ = load("smollm2-135m", device="cpu")
ids = torch.arange(8192)
for kind in ("distill-kd", "distill-tvd"):
    path = default_weights(kind)
    if not path.exists():
        save(new_model(m, [0, 10, 19, 29], ids).cpu(), path, {"stand_in": True})
        print("stand-in", path)
