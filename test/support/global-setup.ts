// Starts the real servers the integration tests need (filled in by the stores work).
export default async function setup(): Promise<() => Promise<void>> {
  return async () => {}
}
