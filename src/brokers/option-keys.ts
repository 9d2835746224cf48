// The refusal of unknown broker options, with their values hidden. Shared by the adapters, the
// webhook publisher and the `tls` check.
import { checkOptionKeys } from '../core/validate.js'

/**
 * A refused value as an error may show it: text, bytes, arrays and objects are hidden. What a
 * broker's option check refuses is often a credential given where it does not go (`password`,
 * `token`, another client's TLS `passphrase` or `key`, a webhook's misspelt `secret`, a private
 * key given as the CA), or a section holding them (a misspelt `tsl: { key, passphrase }`,
 * Node's `key: [{ pem, passphrase }]`), and an error message quotes the first 60 characters of a
 * string and keeps the value itself, which end up in logs.
 */
export function hideText(value: unknown): unknown {
  return typeof value === 'string' || (typeof value === 'object' && value !== null)
    ? '[hidden]'
    : value
}

/**
 * `checkOptionKeys` for a broker option bag: throws `InvalidOptionError` naming
 * `${prefix}.${key}` for an unknown key, its value hidden by {@link hideText}, and for a known
 * one given as null (only undefined means the default). Under the prefix `options` (a function's
 * options, as `verifyWebhookSignature`'s) a null option is named by its bare key, as its own
 * check names it.
 */
export function checkKnownBrokerOptions(
  prefix: string,
  options: object,
  known: ReadonlySet<string>,
): void {
  // Built only at construction, never per message.
  const shown = Object.fromEntries(Object.entries(options).map(([k, v]) => [k, hideText(v)]))
  checkOptionKeys(prefix, shown, known, { bareNames: prefix === 'options' })
}
