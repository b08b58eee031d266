"""The common layer: what the machine side (`elemental_register`) and the operator
(`elemental_operator`) both need. Both import it; it imports neither (the contract in
`.importlinter`, checked by `make lint`).

- `protocol`: the registration wire format (frames, message ids, auth headers);
- `attestation`: the server side of the TPM exchange, plus the key helpers the client shares;
- `run`: the one subprocess wrapper;
- `errors`: the one user-error type (`Die`, `die(message, hint)`) and the entry-point handler;
- `log`: logging set-up and `step()` progress lines;
- `consts`: label/annotation keys, default directories and ports, the seed kernel command line;
- `cmdline`: the kernel command-line parser.
"""
