//! Budget units spent per (identity, program version).

use quorumvm_ledger::{LedgerError, Sql, sql_params};

use crate::PolicyError;

/// What one identity may still spend on one program version. `limit` comes from the version's
/// policy; only `spent` is stored, so a policy's limit is never copied where it could drift.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Budget {
    pub limit: u64,
    pub spent: u64,
}

impl Budget {
    pub fn remaining(&self) -> u64 {
        self.limit.saturating_sub(self.spent)
    }

    /// Spends `cost` units, or refuses (changing nothing) if that would go over the limit.
    pub fn charge(&mut self, cost: u64) -> Result<(), PolicyError> {
        let remaining = self.remaining();
        if cost > remaining {
            return Err(PolicyError::BudgetExhausted { remaining, cost });
        }
        self.spent += cost;
        Ok(())
    }

    /// The stored counter of (`identity`, `program`), against `limit`, locked to the end of the
    /// transaction: processes sharing a PostgreSQL database (coordinator replicas) charge one
    /// budget in turns, each reading what the one before it committed. The row is made first if
    /// it is new, so that there is a row to lock even for the first charge.
    pub fn load(
        tx: &dyn Sql,
        identity: &str,
        program: &str,
        limit: u64,
    ) -> Result<Budget, LedgerError> {
        tx.execute(
            "INSERT INTO budget_spent (identity, program, spent) VALUES (?1, ?2, 0)
             ON CONFLICT (identity, program) DO NOTHING",
            sql_params![identity, program],
        )?;
        let row = tx.query_opt(
            &format!(
                "SELECT spent FROM budget_spent WHERE identity = ?1 AND program = ?2{}",
                tx.dialect().for_update()
            ),
            sql_params![identity, program],
        )?;
        let spent = match row {
            Some(row) => row.uint(0)?,
            None => 0,
        };
        Ok(Budget { limit, spent })
    }

    pub fn save(&self, tx: &dyn Sql, identity: &str, program: &str) -> Result<(), LedgerError> {
        tx.execute(
            "UPDATE budget_spent SET spent = ?3 WHERE identity = ?1 AND program = ?2",
            sql_params![identity, program, self.spent],
        )?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn charges_up_to_the_limit_and_no_further() {
        let mut b = Budget {
            limit: 10,
            spent: 0,
        };
        b.charge(4).unwrap();
        b.charge(6).unwrap();
        assert_eq!(b.remaining(), 0);
        assert!(matches!(
            b.charge(1),
            Err(PolicyError::BudgetExhausted {
                remaining: 0,
                cost: 1
            })
        ));
        assert_eq!(b.spent, 10);
    }

    #[test]
    fn a_refused_charge_reports_what_is_left() {
        let mut b = Budget {
            limit: 10,
            spent: 7,
        };
        assert!(matches!(
            b.charge(5),
            Err(PolicyError::BudgetExhausted {
                remaining: 3,
                cost: 5
            })
        ));
        assert_eq!(
            b,
            Budget {
                limit: 10,
                spent: 7
            }
        );
    }

    #[test]
    fn a_lowered_limit_leaves_nothing_rather_than_wrapping() {
        let b = Budget { limit: 5, spent: 8 };
        assert_eq!(b.remaining(), 0);
    }

    proptest! {
        #[test]
        fn spending_never_exceeds_the_limit(
            limit in 0u64..1_000,
            costs in proptest::collection::vec(0u64..200, 0..60),
        ) {
            let mut b = Budget { limit, spent: 0 };
            let mut accepted = 0u64;
            for cost in costs {
                let before = b;
                match b.charge(cost) {
                    Ok(()) => accepted += cost,
                    Err(_) => {
                        prop_assert_eq!(b, before);
                        prop_assert!(cost > before.remaining());
                    }
                }
                prop_assert!(b.spent <= limit);
                prop_assert_eq!(b.spent, accepted);
            }
        }

        #[test]
        fn huge_values_do_not_overflow(spent in any::<u64>(), cost in any::<u64>()) {
            let limit = u64::MAX;
            let mut b = Budget { limit, spent };
            let ok = b.charge(cost).is_ok();
            prop_assert_eq!(ok, cost <= limit - spent);
        }
    }
}
