/**
 * An RFC 9110 token (`tchar`+): what a header name or a method must be. One pattern for every
 * place that checks a header name (proxy config, webhook headers, the proxy's deadline header
 * and its fast-path responses), so they all accept the same names.
 */
export const httpTokenPattern = /^[!#$%&'*+.^_`|~0-9A-Za-z-]+$/
