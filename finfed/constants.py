"""Keys shared by the ServerApp and the ClientApp: one spelling, one place."""

# RecordDict entries
ARRAYS = "arrays"
CONFIG = "config"
METRICS = "metrics"

# Metric keys a site returns (numbers only: nothing about its records leaves the site)
NUM_EXAMPLES = "num-examples"  # FedAvg weighting key
SITE_ID = "site-id"
TRAIN_LOSS = "train-loss"
EPSILON = "epsilon"
DELTA = "delta"  # the delta the site's epsilon was computed at (its own budget delta, maybe not the run's)
STEPS = "steps"
NOISE_MULTIPLIER = "noise-multiplier"
SAMPLE_RATE = "sample-rate"
REFUSED = "refused"  # 1 when a site declined the round to stay within its budget
# Flower Error code of a SecAgg+ setup reply by which a site declines the round before any key or masked
# vector leaves it (Flower's own codes are 0-8).
REFUSAL_ERROR_CODE = 4001
# Coordinator-side mark on a site's metrics whose update failed validation (finfed/coordinator/validation.py):
# its reason category. Never sent by a site.
UPDATE_REJECTED = "update-rejected"
EVAL_LOSS = "eval-loss"
EVAL_ACCURACY = "eval-accuracy"
EVAL_MACRO_F1 = "eval-macro-f1"
EVAL_F1 = "eval-f1"  # QA: token-overlap F1 of the predicted answers
EVAL_EXACT_MATCH = "eval-exact-match"  # QA
# Classification: the global model's recall of label i on a site's validation split, `eval-recall-<i>` (by index,
# so no key carries a label's text); a disclosed, non-private statistic, allow-listed for the first labels only.
EVAL_RECALL_PREFIX = "eval-recall-"
MAX_SHARED_LABELS = 256
# Classification, opt-in (node config `share-label-shares`): the share of a site's validation records the global
# model assigns to label i minus that label's share of them, `eval-share-gap-<i>` (by index), for every label among
# the first MAX_SHARED_LABELS (a run with more labels shares no gap for the rest). Its
# example-weighted mean over the sites is the pooled gap: how far the model leans to or away from each label.
EVAL_SHARE_GAP_PREFIX = "eval-share-gap-"

# The site's name (an institution's name: public, not data about its records). A metric record holds numbers
# only, so it travels in a record of its own (plain replies) or in the SecAgg+ FitRes metrics (text allowed);
# finfed.wire.clean_site_name keeps it short and free of paths on both ends.
SITE_RECORD = "site"
SITE_NAME = "site-name"

# Train-config keys the server sends
SERVER_ROUND = "server-round"
TOTAL_ROUNDS = "total-rounds"
FROZEN_FINGERPRINT = "frozen-fingerprint"
RESUMED_AT_ROUND = "resumed-at-round"  # > 0: the coordinator restarted from its checkpoint of that round
TENSOR_NAMES = "tensor-names"  # SecAgg+ (legacy messages carry unnamed tensors): the order, comma-joined

# Context.state entries kept by a site across rounds
ACCOUNTANT_STATE = "finfed-accountant"

# node_config keys
NODE_PARTITION_ID = "partition-id"
NODE_DATA_PATH = "data-path"
NODE_LEDGER_PATH = "ledger-path"
NODE_BUDGET_EPSILON = "budget-epsilon"
NODE_BUDGET_DELTA = "budget-delta"
NODE_AUDIT_LOG = "audit-log"
NODE_REQUIRE_SECAGG = "require-secure-aggregation"  # the site sends updates only masked
NODE_SHARE_TRAIN_LOSS = "share-train-loss"  # the site opts in to sending its (non-private) training loss
NODE_SHARE_LABEL_SHARES = "share-label-shares"  # the site opts in to sending eval-share-gap-<i>
NODE_SITE_NAME = "site-name"  # deployment: the site's name (site.toml [site] name), sent beside its id
NODE_SITE_ID = "site-id"  # deployment: the site's number in the run's records (finfed deploy)
NODE_DATASET_NAME = "dataset-name"  # the name a site's ledger composes spend under (site.toml [data] name)
NODE_SITE_DIR = "site-dir"  # the site's own folder: its log, its ledger's chain head (never the coordinator's)
NODE_TEXT_COLUMN = "text-column"  # deployment: the site's own column names, if they differ from the run's
NODE_LABEL_COLUMN = "label-column"
NODE_DEVICE = "device"  # deployment: the device the site trains on (site.toml [site] device); never the run's

# Environment: a file where one simulation's processes share their noise calibrations (finfed.privacy.calibration)
CALIBRATION_CACHE_ENV = "FINFED_CALIBRATION_CACHE"
