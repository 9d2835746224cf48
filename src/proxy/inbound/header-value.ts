// One request header as one string, however Node's parser delivered it.

/**
 * The value of header `name` (lower case) in `headers`: a repeated header joined with `, `
 * (RFC 9110 §5.3: the same meaning as one header listing the values), or undefined when the
 * request does not have it.
 *
 * @example
 * ```ts
 * headerValueOf({ 'x-a': ['1', '2'] }, 'x-a') // '1, 2'
 * ```
 */
export function headerValueOf(
  headers: Readonly<Record<string, string | string[]>>,
  name: string,
): string | undefined {
  // Own headers only: a name from the config such as `constructor` would otherwise read
  // Object.prototype's, and a function is neither a string nor a list of them.
  if (!Object.hasOwn(headers, name)) return undefined
  const value = headers[name]
  if (value === undefined) return undefined
  return typeof value === 'string' ? value : value.join(', ')
}
