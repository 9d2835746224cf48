import { InvalidOptionError } from '../core/errors.js'
import { exceedsBytes, isStorableText } from '../core/text.js'
import { checkOptionKeys, optionKeys } from '../core/validate.js'
import { sha256Hex } from './fingerprint.js'
import { headerNameExpected, isHeaderName } from './header-name.js'
import type { IdempotencyRequest } from './types.js'

/**
 * The most UTF-8 bytes of a scope. Scope and key are one primary-key entry of the record, and
 * PostgreSQL refuses an index entry over 2,704 bytes (a bare "index row size" error, 54000)
 * where SQLite stores any length: with a key at its longest (255 characters, up to 765 bytes)
 * a scope of this size still fits, and a scope one database accepts the other stores too.
 */
export const maxScopeBytes = 1024

/** Whether `scope` can be stored: non-empty, {@link isStorableText}, at most {@link maxScopeBytes}. */
export function isStorableScope(scope: string): boolean {
  return scope !== '' && isStorableText(scope) && !exceedsBytes(scope, maxScopeBytes)
}

/** Computes the scope a request's key lives in. */
export type ScopeFunction = (request: IdempotencyRequest) => string | Promise<string>

/**
 * Where keys live, so one client can never read another's stored response by sending the same
 * key:
 * - `'credential'` (the default): per API credential, the SHA-256 of the `Authorization` header
 *   (or, without one, of `X-API-Key`); the credential itself is never stored. Requests with
 *   neither share the scope `anonymous`.
 * - `{ tenantHeader: 'x-tenant-id' }`: per tenant, named by a header that a trusted layer (your
 *   auth middleware or gateway) sets; requests without it fall back to the credential scope.
 *   The name is matched case-insensitively and must be an HTTP token (RFC 9110 section 5.6.2),
 *   else `createIdempotency` throws `InvalidOptionError` (`option: 'scope.tenantHeader'`), as
 *   it does for any other key of the object.
 * - a function of the request (use `request.native` for the framework's request object, e.g. an
 *   authenticated user id).
 */
export type ScopeOption = 'credential' | { readonly tenantHeader: string } | ScopeFunction

/** The keys a tenant scope takes (internal: not exported from the package root). */
export const tenantScopeOptions = optionKeys<{ readonly tenantHeader: string }>({
  tenantHeader: true,
})

/** The headers the `'credential'` scope reads, in order. */
export const credentialHeaders: readonly string[] = ['authorization', 'x-api-key']

/**
 * The first credential a request carries: `Authorization`, else `X-API-Key` (an empty one
 * counts as absent), with the header it came in; undefined when it has neither.
 */
export function credentialOf(
  header: (name: string) => string | undefined,
): { readonly header: string; readonly value: string } | undefined {
  for (const name of credentialHeaders) {
    const value = header(name)
    if (value !== undefined && value !== '') return { header: name, value }
  }
  return undefined
}

/** The default scope: the hash of the request's credential, or `anonymous`. */
export function credentialScope(request: IdempotencyRequest): string {
  const credential = credentialOf((name) => request.header(name))
  return credential === undefined ? 'anonymous' : `credential:${sha256Hex(credential.value)}`
}

/** Turns the `scope` option into a function, validating it. */
export function scopeResolver(option: unknown): ScopeFunction {
  if (option === undefined || option === 'credential') return credentialScope
  if (typeof option === 'function') return option as ScopeFunction
  if (typeof option === 'object' && option !== null) {
    // A misspelt key beside the header name would be dropped without a word.
    checkOptionKeys('scope', option, tenantScopeOptions)
    const header = (option as { tenantHeader?: unknown }).tenantHeader
    // Checked here, once: a name that is not a token never matches a request's header, so
    // every request would fall back to the credential scope without a word.
    if (typeof header !== 'string' || !isHeaderName(header)) {
      throw new InvalidOptionError('scope.tenantHeader', headerNameExpected, header)
    }
    const name = header.toLowerCase()
    return (request) => {
      const tenant = request.header(name)
      return tenant === undefined || tenant === '' ? credentialScope(request) : `tenant:${tenant}`
    }
  }
  throw new InvalidOptionError(
    'scope',
    '"credential", { tenantHeader: string } or a function',
    option,
  )
}
