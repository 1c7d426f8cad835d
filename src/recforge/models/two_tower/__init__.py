"""Two-tower models: a user tower and an item tower, scored by the inner product of their outputs.

Presets (`preset=`):
- "retrieval" (default): the user tower reads a pooled bag of the user's items (YouTube-DNN style, with
  dropout over the bag), the item tower an ID embedding; 128-d tanh outputs; one example per user with a
  multinomial softmax over the whole catalogue (Mult-DAE style), item biases, temperature 0.5. Features
  are opt-in (`user_features`/`item_features`): on ML-100K they lowered NDCG@10. For large catalogues use
  `batching="pairs", softmax="in_batch"` (in-batch negatives, log-Q correction, uniform extras).
- "rating": ID + features, biases, weighted-MSE rating regression; the strong rating variant.
- "anime-paper": the anime study's towers: features only, MLP [n_features, 256, 512, 256] with
  ReLU + Dropout(0.5), N(0, 0.01²) initialisation, min-max scaled inputs, ratings scaled to [0, 1], and its
  loss λ1·(inverse-frequency-weighted MSE) + λ2·(in-batch margin loss, m = 0.5).
- "id-only": ID embeddings of size 32, score = ReLU(⟨u, i⟩), MSE, NAdam (the anime clustering study).

Modules: `config` (hyper-parameters and presets), `features` (what the towers read besides IDs),
`network` (the towers), `training` (the epoch trainer the shared loop runs; losses come from the tasks in
`recforge.nn.tasks`), `model` (`TwoTower`: fit, then serve as a factor model, cold start, state).
"""

from recforge.models.two_tower.config import PRESETS, TwoTowerConfig
from recforge.models.two_tower.model import TwoTower

__all__ = ["PRESETS", "TwoTower", "TwoTowerConfig"]
