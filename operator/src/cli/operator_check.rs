//! `berth operator --check`
use super::operator::OperatorArgs;
pub async fn run(_args: &OperatorArgs) -> u8 {
    0
}
