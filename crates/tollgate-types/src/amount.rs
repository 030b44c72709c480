//! Integer amounts: money in micro-units, tokens as counts. No floating point touches money.

use serde::{Deserialize, Serialize};

/// Money in integer micro-units (1 USD = 1_000_000 micro-units).
pub type MicroUnits = u64;

/// A count of model tokens.
pub type Tokens = u64;

/// Price of a model, per million tokens, in micro-units, with the catalog version that set it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok_micros: MicroUnits,
    pub output_per_mtok_micros: MicroUnits,
}

impl Price {
    /// Cost of a request in micro-units, rounded up to the next micro-unit so that nothing is
    /// ever billed below its true price. Saturates instead of overflowing.
    pub fn cost_micros(&self, input: Tokens, output: Tokens) -> MicroUnits {
        let raw = u128::from(input) * u128::from(self.input_per_mtok_micros)
            + u128::from(output) * u128::from(self.output_per_mtok_micros);
        let micros = raw.div_ceil(1_000_000);
        u64::try_from(micros).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_rounds_up_and_is_exact_for_round_numbers() {
        let p = Price {
            input_per_mtok_micros: 2_500_000,
            output_per_mtok_micros: 10_000_000,
        };
        assert_eq!(p.cost_micros(1_000_000, 0), 2_500_000);
        assert_eq!(p.cost_micros(1, 0), 3); // 2.5 micro-units rounds up
        assert_eq!(p.cost_micros(0, 3), 30);
        assert_eq!(p.cost_micros(u64::MAX, u64::MAX), u64::MAX);
    }
}
