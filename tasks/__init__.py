"""seqio tasks and mixtures. Importing this registers the file-free ones.

File-free: `synthetic` (the embedded default) and `c4_caclm` (TFDS; read only when used).
Tasks whose data lives in a user's directory are registered by a function taking the path,
callable from Python or gin (`@tasks.sni.register()`): `tasks.sni.register`,
`tasks.p3.register`, `tasks.metaicl.register`, `tasks.bigbench.register`,
`tasks.caclm.register_text`. See tasks/README.md.
"""
from tasks import bigbench
from tasks import caclm
from tasks import metaicl
from tasks import p3
from tasks import sni
from tasks import synthetic
