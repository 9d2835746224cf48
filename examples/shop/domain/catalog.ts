// The shop's catalog, the same in the legacy monolith and in the new inventory service (the
// legacy copy is the one being strangled).

/** One product. */
export interface Product {
  readonly sku: string
  readonly name: string
  readonly priceCents: number
  /** Initial stock; `limited-print` runs out during a demo, so some orders are cancelled. */
  readonly stock: number
}

/** Every product on sale. */
export const catalog: readonly Product[] = [
  { sku: 'kettle', name: 'Kettle', priceCents: 2_500, stock: 1_000_000 },
  { sku: 'mug', name: 'Mug', priceCents: 900, stock: 1_000_000 },
  { sku: 'teapot', name: 'Teapot', priceCents: 4_200, stock: 1_000_000 },
  { sku: 'tea-100g', name: 'Tea, 100 g', priceCents: 1_200, stock: 1_000_000 },
  { sku: 'limited-print', name: 'Limited print', priceCents: 9_900, stock: 6 },
]

/** A line of an order. */
export interface OrderLine {
  readonly sku: string
  readonly qty: number
}

/** What placing an order sends (to legacy or to the new orders service: the same body). */
export interface PlaceOrder {
  readonly orderId: string
  readonly customerId: string
  readonly items: readonly OrderLine[]
  readonly amountCents: number
}

/** Payments declines any single charge above this (a card limit), so some sagas compensate. */
export const cardLimitCents = 20_000

/** The price of some lines. */
export function priceOf(items: readonly OrderLine[]): number {
  let total = 0
  for (const line of items) {
    const product = catalog.find((p) => p.sku === line.sku)
    if (product === undefined) throw new Error(`unknown sku "${line.sku}"`)
    total += product.priceCents * line.qty
  }
  return total
}
