/**
 * An RFC 9110 token (`tchar`+): what a header name or a method must be. One pattern for every
 * place that checks a header name (proxy config, webhook headers, the proxy's deadline header
 * and its fast-path responses), so they all accept the same names.
 */
export const httpTokenPattern = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/

/**
 * The same set as {@link httpTokenPattern}, for parsers that read bytes or char codes one at a
 * time: `tokenChar[c]` is 1 when `c` is an RFC 9110 `tchar`, else 0.
 */
export const tokenChar: Uint8Array = new Uint8Array(256)
for (const c of "!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")
  tokenChar[c.charCodeAt(0)] = 1
